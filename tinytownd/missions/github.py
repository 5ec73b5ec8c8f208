"""GitHub issues as a mission source, through the `gh` CLI.

* refs: `23` (owner/repo from `git remote get-url origin`), `owner/repo#23`, issue URLs;
* `gh issue view N --repo o/r --json title,body` with a subprocess timeout; a failed call gives
  the title `Issue #N` and an empty body (as tt does), and the mission log says so;
* dependency markers "depends on / after / blocked by / requires #N" match as whole words (so
  `hereafter #3` is no dependency), `owner/repo#N` refs too; kind and owner_role are inferred
  from whole words (`spec` in "specific" or `ui` in "build" do not count);
* dependencies are keyed by (owner, repo, number), not the number alone; a dependency outside
  the mission is dropped and logged; a cycle is an error naming the titles;
* `source_ref` is `owner/repo#N` (tt writes `owner/repo#N/#N`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .compile import Compiled, ItemSpec, MissionFileError, build, find_cycle
from .mission import MissionPolicy, objective_issue
from .watch_checks import CommandError, run_command

DEP_RE = re.compile(r"\b(?:depends?\s+on|after|blocked\s+by|requires?)\s*:?\s*"
                    r"((?:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)?#\d+"
                    r"(?:\s*(?:,|&|\band\b)\s*(?:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)?#\d+)*)",
                    re.IGNORECASE)
REF_RE = re.compile(r"(?:([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+))?#(\d+)")


@dataclass
class Issue:
    owner: str
    repo: str
    number: int
    title: str = ""
    body: str = ""
    fetched: bool = True

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.owner.lower(), self.repo.lower(), self.number)


def _words(text: str, *words: str) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def infer_kind(text: str) -> str:
    t = text.lower()
    if _words(t, "design", "rfc", "proposal"):
        return "design"
    if _words(t, "test", "tests", "testing", "spec", "specs"):
        return "test"
    if _words(t, "review"):
        return "review"
    if _words(t, "merge"):
        return "mergegate"
    if _words(t, "followup", "follow-up", "fix"):
        return "followup"
    return "implement"


def infer_role(text: str, kind: str) -> str | None:
    t = text.lower()
    if _words(t, "backend", "api", "server"):
        return "backend"
    if _words(t, "frontend", "ui", "web"):
        return "frontend"
    if kind == "test" or "qa owner" in t:
        return "tester"
    if kind == "review":
        return "reviewer"
    if _words(t, "devops", "infrastructure", "deploy"):
        return "devops"
    return None


def parse_deps(body: str, owner: str, repo: str) -> list[tuple[str, str, int]]:
    out = []
    for m in DEP_RE.finditer(body or ""):
        for o, r, n in REF_RE.findall(m.group(1)):
            key = ((o or owner).lower(), (r or repo).lower(), int(n))
            if key not in out:
                out.append(key)
    return out


def parse_issue_ref(ref: str, *, cwd: str | None = None, timeout: float = 10.0,
                    git: str = "git") -> tuple[str, str, int]:
    ref = ref.strip()
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)#(\d+)", ref)
    if m:
        return m.group(1), m.group(2), int(m.group(3))
    if "github.com" in ref and "/issues/" in ref:
        parts = [p for p in ref.rstrip("/").split("/") if p]
        try:
            return parts[-4], parts[-3], int(parts[-1])
        except (IndexError, ValueError):
            raise ValueError(f"invalid issue URL {ref!r}") from None
    if ref.isdigit():
        try:
            rc, out, _ = run_command([git, "remote", "get-url", "origin"], timeout=timeout,
                                     cwd=cwd)
        except CommandError as e:
            raise ValueError(f"issue {ref}: {e}") from None
        url = out.strip()
        m = re.search(r"github\.com[:/]([^/\s]+)/([^/\s]+?)(?:\.git)?/?$", url) if rc == 0 else None
        if not m:
            raise ValueError(f"issue {ref}: no GitHub 'origin' remote here; use owner/repo#{ref}")
        return m.group(1), m.group(2), int(ref)
    raise ValueError(f"invalid issue reference {ref!r} (use N, owner/repo#N or an issue URL)")


def fetch_issue(owner: str, repo: str, n: int, *, gh: str = "gh", timeout: float = 30.0,
                cwd: str | None = None) -> Issue:
    try:
        rc, out, err = run_command([gh, "issue", "view", str(n), "--repo", f"{owner}/{repo}",
                                    "--json", "title,body"], timeout=timeout, cwd=cwd)
        if rc == 0:
            d = json.loads(out)
            return Issue(owner, repo, n, str(d.get("title") or f"Issue #{n}"),
                         str(d.get("body") or ""))
    except (CommandError, ValueError):
        pass
    return Issue(owner, repo, n, f"Issue #{n}", "", fetched=False)


def compile_issues(issues: list[Issue], policy: MissionPolicy | None = None,
                   max_attempts: int = 3) -> Compiled:
    by_key = {}
    for iss in issues:
        by_key.setdefault(iss.key, iss)
    specs, notes = [], []
    for iss in by_key.values():
        kind = infer_kind(f"{iss.title} {iss.body}")
        deps = []
        for d in parse_deps(iss.body, iss.owner, iss.repo):
            if d in by_key and d != iss.key:
                deps.append(f"{d[0]}/{d[1]}#{d[2]}")
            elif d not in by_key:
                notes.append(f"Issue {iss.owner}/{iss.repo}#{iss.number} depends on "
                             f"{d[0]}/{d[1]}#{d[2]}, which is not part of this mission (ignored)")
        specs.append(ItemSpec(file_id=f"{iss.key[0]}/{iss.key[1]}#{iss.number}", title=iss.title,
                              kind=kind, owner_role=infer_role(f"{iss.title} {iss.body}", kind),
                              depends_on=deps, description=iss.body,
                              source_ref=f"{iss.owner}/{iss.repo}#{iss.number}"))
        if not iss.fetched:
            notes.append(f"Could not fetch issue {iss.owner}/{iss.repo}#{iss.number} with gh; "
                         "using its number as the title")
    cyc = find_cycle({s.file_id: s.depends_on for s in specs})
    if cyc:
        titles = {s.file_id: s.title for s in specs}
        raise MissionFileError("issues", [
            "dependency cycle: " + " -> ".join(f"'{titles[c]}' ({c})" for c in cyc)])
    c = build(specs, [objective_issue(i.owner, i.repo, i.number) for i in by_key.values()],
              policy or MissionPolicy(), max_attempts, source="issues")
    c.log.extend(notes)
    return c
