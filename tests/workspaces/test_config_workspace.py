"""The `workspace:` section: refused at load (check-config, reload, batch) naming the key."""
import os
import string

import pytest
from hypothesis import given, settings, strategies as st

from tests.support.gitrepo import make_repo
from tinytownd import config
from tinytownd.runtime import settings as agent_settings
from tinytownd.workspaces import naming


def _load(tmp, clis_ws=None, agent_ws=None, **agent):
    data = {"town": {"name": "t", "root": str(tmp)},
            "agent_clis": {"edit": {"command": "true", **({"workspace": clis_ws}
                                                          if clis_ws is not None else {})}},
            "agents": [{"name": "w", "cli": "edit", **agent,
                        **({"workspace": agent_ws} if agent_ws is not None else {})}]}
    return config.from_dict(data, str(tmp / "t.yaml"), env={})


def _err(tmp, **kw):
    with pytest.raises(config.ConfigError) as e:
        _load(tmp, **kw)
    return str(e.value)


@pytest.mark.parametrize("ws,key,words", [
    ({"mode": "worktrees"}, "agents[0].workspace.mode", "not one of"),
    ({"branch": "tt/{tsk}"}, "agents[0].workspace.branch", "unknown placeholder {tsk}"),
    ({"branch": "tt/{task:>8}"}, "agents[0].workspace.branch", "not a placeholder"),
    ({"branch": "tt/{task"}, "agents[0].workspace.branch", "tt/{task"),
    ({"branch": "tt/a b{task}"}, "agents[0].workspace.branch", "sample task"),
    ({"branch": "tt/..{task}"}, "agents[0].workspace.branch", "'..'"),
    ({"branch": "tt/{task}.lock"}, "agents[0].workspace.branch", ".lock"),
    ({"branch": "tt/{task}:x"}, "agents[0].workspace.branch", "':'"),
    ({"base": "-x"}, "agents[0].workspace.base", "not a git ref"),
    ({"commit": "always"}, "agents[0].workspace.commit", "not one of"),
    ({"keep": "sometimes"}, "agents[0].workspace.keep", "not one of"),
    ({"dir": ""}, "agents[0].workspace.dir", "empty"),
    ({"colour": "red"}, "agents[0].workspace.colour", "unknown"),
    ("worktree", "agents[0].workspace", "mapping"),
])
def test_bad_keys_named(tmp_path, ws, key, words):
    msg = _err(tmp_path, agent_ws=ws)
    assert f": {key}: " in msg and words in msg, msg


def test_bad_key_of_a_cli_named(tmp_path):
    msg = _err(tmp_path, clis_ws={"keep": "x"})
    assert ": agent_clis.edit.workspace.keep: " in msg


def test_repo_not_a_git_repository(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    msg = _err(tmp_path, agent_ws={"mode": "worktree", "repo": str(plain)})
    assert ": agents[0].workspace.repo: " in msg and "not a git repository" in msg
    msg = _err(tmp_path, agent_ws={"mode": "worktree", "repo": str(tmp_path / "nope")})
    assert "not a directory" in msg
    # the default repo is the agent's workdir: named as such
    msg = _err(tmp_path, agent_ws={"mode": "worktree"}, workdir=str(plain))
    assert ": agents[0].workspace.repo: the agent's workdir: " in msg
    # the CLI's repo is named under the CLI
    msg = _err(tmp_path, clis_ws={"mode": "worktree", "repo": str(plain)})
    assert ": agent_clis.edit.workspace.repo: " in msg


def test_read_only_repository_error_says_what_to_do():
    from tinytownd.workspaces.policy import classify
    e = classify("worktree add", "/srv/repo", 128,
                 "fatal: could not create directory '/srv/repo/.git/worktrees/x': "
                 "Read-only file system")
    assert e.kind == "daemon" and "read-only" in str(e) and "ReadWritePaths=/srv/repo" in str(e)
    e = classify("worktree add", "/srv/repo", 128, "error: cannot lock ref: Permission denied")
    assert e.kind == "daemon" and "ReadWritePaths=/srv/repo" in str(e)
    e = classify("worktree add", "/srv/repo", 255, "fatal: a branch named 'x' already exists",
                 default="task")
    assert e.kind == "task"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_git_dir_not_writable(tmp_path, repo):
    os.chmod(repo / ".git", 0o555)
    try:
        msg = _err(tmp_path, agent_ws={"mode": "worktree", "repo": str(repo)})
        assert "ReadWritePaths=" in msg
    finally:
        os.chmod(repo / ".git", 0o755)


def test_agent_entry_wins_over_cli(tmp_path, repo):
    cfg = _load(tmp_path, clis_ws={"mode": "worktree", "repo": str(repo), "keep": "always",
                                   "branch": "cli/{task}"},
                agent_ws={"keep": "never"})
    s = agent_settings.resolve(cfg, cfg.agents[0], "aid")
    ws = s.workspace
    assert ws.keep == "never" and ws.branch == "cli/{task}" and ws.repo == str(repo)
    assert ws.dir == str(tmp_path / "workspaces") and ws.commit == "auto" and ws.base == "HEAD"
    cfg = _load(tmp_path, clis_ws={"mode": "worktree", "repo": str(repo)},
                agent_ws={"mode": "shared"})
    assert agent_settings.resolve(cfg, cfg.agents[0], "aid").workspace is None
    cfg = _load(tmp_path)
    assert agent_settings.resolve(cfg, cfg.agents[0], "aid").workspace is None


def test_relative_repo_and_dir_under_root(tmp_path):
    repo = make_repo(tmp_path / "repo")
    cfg = _load(tmp_path, agent_ws={"mode": "worktree", "repo": "repo", "dir": "wt"})
    ws = agent_settings.resolve(cfg, cfg.agents[0], "aid").workspace
    assert ws.repo == str(repo) and ws.dir == str(tmp_path / "wt")


# ---------------------------------------------------------------- the pattern, generated
_ref_ok = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)


@given(st.lists(st.one_of(_ref_ok, st.sampled_from(["{%s}" % p for p in naming.PLACEHOLDERS])),
                min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_good_patterns_accepted_and_render_valid_refs(parts):
    pattern = "/".join(parts)
    assert naming.pattern_problem(pattern) is None
    name = naming.render(pattern, naming.values(town="t", task_id="abc/../x y", description="Ünï ~^:",
                                                agent="w 1", batch=None, item=None))
    assert naming.ref_problem(name) is None, name


@given(st.text(min_size=0, max_size=30))
@settings(max_examples=300, deadline=None)
def test_any_pattern_is_refused_or_gives_valid_refs(pattern):
    why = naming.pattern_problem(pattern)
    if why is None:
        for desc in ("", "a b", "[x] ..//~", "ε" * 80):
            name = naming.render(pattern, naming.values(town="t", task_id="0123456789ab",
                                                        description=desc, agent="a",
                                                        batch="b", item="i"))
            assert naming.ref_problem(name) is None, (pattern, desc, name)


@given(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10))
def test_unknown_placeholder_named(word):
    why = naming.pattern_problem("tt/{%s}" % word)
    assert (why is None) == (word in naming.PLACEHOLDERS)
    if why:
        assert f"{{{word}}}" in why


def test_ref_problem_agrees_with_git(tmp_path):
    import subprocess
    for name in ("tt/a", "a..b", "a/.b", "a.lock", "a b", "a~", "@", "a@{b", "a//b", "a/", "-a",
                 "a.", "ok-1/x_y", "x:y", "a*b", "a[b", "a\\b"):
        git_ok = subprocess.run(["git", "check-ref-format", f"refs/heads/{name}"],
                                capture_output=True).returncode == 0
        stricter = name in ("-a", "@")     # valid refs, but git branch/worktree refuse them
        assert (naming.ref_problem(name) is None) == (git_ok and not stricter), name
