"""The config-fuzz class: generated and hostile config files through check-config and through
the reload of a running daemon.
"""
from __future__ import annotations

import threading
import time

import yaml

from . import harness
from .harness import Trial, tail_text, tt
from .classes import _settle, _after_ends, fault  # noqa: F401


# ============================================================================= config fuzz
@fault("config-fuzz", "generated/hostile config files through check-config and through the "
       "reload of a running daemon; count: 100000", trials_full=1, budget_quick=100,
       budget_full=420)
def config_fuzz(trial: Trial) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from . import strategies as S

    res = trial.result
    root = str(trial.dir / "cf")
    cfgf = trial.dir / "fuzz.yaml"
    agent_cmd = f"sh {trial.dir / 'agent.sh'}"

    def check_one(label: str, data: bytes) -> None:
        trial.log(f"check-config {label[:60]}")
        cfgf.write_bytes(data)
        res.bad_inputs += 1
        p = tt("check-config", "-c", cfgf, timeout=30, env={"REDIS_URL": "",
                                                           "TINYTOWND_CONFIG": ""})
        if p.returncode is None:
            res.hangs += 1
            res.note(f"check-config hung (30 s) on {label}")
        elif p.returncode in (0, 78) and not harness.has_traceback(p.stderr, p.stdout):
            res.bad_handled += 1
        else:
            res.note(f"check-config on {label}: exit {p.returncode}: "
                     f"{tail_text(p.stderr, 300)!r}")

    for label, data in S.hand_picked_configs(root, agent_cmd):
        check_one(label, data)
    for label, text in ((".nan", "runtime: {heartbeat_interval_s: .nan}"),
                        (".nan count", "agents: [{name: w, cli: claude, count: .nan}]"),
                        (".inf timeout", "agent_clis: {x: {command: 'true', timeout_s: .inf}}")):
        cfgf.write_text(f"town: {{name: ft, root: {root}}}\n{text}\n")
        p = tt("check-config", "-c", cfgf, timeout=30)
        res.check(p.returncode == 78, f"check-config refuses {label} for a number "
                                      f"(exit {p.returncode})")

    @settings(max_examples=trial.pick(10, 120), deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(S.config_docs(root))
    def gen(data):
        check_one(f"generated {data[:60]!r}", data)
    gen()

    # --- through reload of a running daemon
    site = trial.site(agents=2, sleep=0.1).start()
    good = site.d.cfg_path.read_bytes()
    before = site.d.status()

    def reload_one(label: str, data: bytes) -> None:
        trial.log(f"reload {label[:60]}")
        site.d.cfg_path.write_bytes(data)
        res.bad_inputs += 1
        t0 = time.monotonic()
        p = tt("reload", "-c", site.d.cfg_path, timeout=60)
        took = time.monotonic() - t0
        st = site.status()
        handled = p.returncode in (0, 1, 78) and not harness.has_traceback(p.stderr, p.stdout) \
            and st is not None
        if p.returncode is None:
            res.hangs += 1
        if p.returncode == 78 and st is not None:
            handled = handled and st.get("reloads") == before.get("reloads")
        if handled:
            res.bad_handled += 1
        else:
            res.note(f"reload of {label}: exit {p.returncode} in {took:.1f}s, status "
                     f"{'answers' if st else 'UNANSWERED'}: {tail_text(p.stderr, 300)!r}")
        if p.returncode in (0, 1):       # it took (part of) it: go back to the good config
            site.d.cfg_path.write_bytes(good)
            tt("reload", "-c", site.d.cfg_path, timeout=60)
            before.update(site.d.status())

    base = yaml.safe_load(good)
    quick_set = ("empty file", "non-UTF-8 bytes", ".nan", "duplicate keys", "2 MB file",
                 "deep nesting", "socket path too long", "top level list")
    for label, data in S.hand_picked_configs(site.root, agent_cmd):
        if "count 100000" in label or (trial.quick and label not in quick_set):
            continue
        reload_one(label, data)

    @settings(max_examples=trial.pick(6, 60), deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(S.config_dict(str(site.root)))
    def gen_reload(doc):
        merged = {**base, **{k: v for k, v in doc.items() if k != "town"}}
        reload_one(f"generated {str(doc)[:80]}", S._dump(merged))
    gen_reload()
    site.d.cfg_path.write_bytes(good)
    tids = site.submit(5)
    res.check(site.wait_terminal(tids, 20), "tasks complete after the reload fuzz")
    site.measure(tids)

    # --- count: 100000 on a running daemon (valid: 1..100000)
    trial.log("reload with count: 100000")
    huge = dict(base)
    huge["agents"] = [{"name": "w", "cli": "fa", "count": 2}, {"name": "x", "cli": "fa",
                                                                "count": 100000}]
    pid = site.daemon_pid()
    rss0 = harness.rss_kb(pid)
    site.d.cfg_path.write_text(yaml.safe_dump(huge))
    res.bad_inputs += 1
    box = {}

    limit = trial.pick(15.0, 90.0)

    def do_reload():
        box["p"] = tt("reload", "-c", site.d.cfg_path, timeout=limit)
    th = threading.Thread(target=do_reload, daemon=True)
    t0 = time.monotonic()
    th.start()
    peak, unanswered = rss0, 0
    while th.is_alive() and time.monotonic() - t0 < limit + 1:
        peak = max(peak, harness.rss_kb(pid))
        if site.status() is None:
            unanswered += 1
        if peak > 3 << 20:      # 3 GiB: stop before the machine suffers
            res.note("daemon RSS over 3 GiB during the count: 100000 reload; killed")
            site.kill9()
            break
        time.sleep(0.5)
    th.join(5)
    took = time.monotonic() - t0
    p = box.get("p")
    for _ in range(6):
        peak = max(peak, harness.rss_kb(pid))
        if site.status() is None:
            unanswered += 1
        time.sleep(0.5)
    grew = (peak - rss0) / 1024
    ok = p is not None and p.returncode is not None and took < 30 and grew < 512 and \
        unanswered == 0
    if ok:
        res.bad_handled += 1
    if trial.quick and site.daemon_pid():
        site.kill9()      # quick: the SIGTERM drain after this is measured by the full run only
    res.note(f"count: 100000 reload: exit {p.returncode if p else None} after {took:.1f}s, RSS "
             f"{rss0 // 1024} -> {peak // 1024} MiB, {unanswered} unanswered status polls: "
             f"{tail_text(p.stdout if p else b'', 200)!r} {tail_text(p.stderr if p else b'', 200)!r}")
