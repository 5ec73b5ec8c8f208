"""`tinytownd batch --http LISTEN`: the dashboard of an embedded batch (URL printed first), and
faulthandler's traceback on SIGABRT."""
from __future__ import annotations

import json
import signal
import subprocess

from tests.support.daemon import free_port
from tests.support.helpers import tinytownd_cmd, wait_for
from tests.support.http import get, get_json, web_daemon


def test_batch_http_prints_the_url_first_and_shows_progress(tmpdir_short):
    bf = tmpdir_short / "b.yaml"
    bf.write_text("tasks:\n" + "".join(f"  - {{id: t{i}, description: job {i}}}\n"
                                       for i in range(12)) +
                  'agent_clis: {s: {command: "sleep 1; echo ok"}}\n'
                  "agents: [{name: w, cli: s, count: 2}]\n")
    port = free_port()
    p = subprocess.Popen(tinytownd_cmd() + ["batch", str(bf), "--dir", str(tmpdir_short / "d"),
                                            "--http", f"127.0.0.1:{port}", "--progress", "json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmpdir_short)
    try:
        first = p.stderr.readline()
        assert first.strip() == f"tinytownd batch: dashboard http://127.0.0.1:{port}/"
        url = f"http://127.0.0.1:{port}"

        def progress():
            try:
                status, doc = get_json(url, "/api/dashboard")
            except OSError:
                return None
            b = doc.get("batches") if status == 200 else None
            return doc if b and b[0]["total"] == 12 and b[0]["completed"] >= 1 else None
        doc = wait_for(progress, 30, interval=0.2, what="batch progress on the dashboard")
        assert doc["batches"][0]["state"] in ("running", "done")   # the scan lags up to 2 s
        assert len(doc["agents"]) == 2
        assert get(url, "/")[0] == 200
        assert p.wait(60) == 0
        lines = [json.loads(x) for x in p.stdout.read().splitlines() if x.startswith("{")]
        assert lines                     # the JSON progress is unchanged on stdout
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_batch_without_http_listens_nowhere(tmpdir_short):
    bf = tmpdir_short / "b.yaml"
    bf.write_text("tasks:\n  - {id: a, description: x}\n"
                  'agent_clis: {s: {command: "true"}}\nagents: [{name: w, cli: s}]\n')
    r = subprocess.run(tinytownd_cmd() + ["batch", str(bf), "--dir", str(tmpdir_short / "d"),
                                          "--progress", "none"], capture_output=True, text=True,
                       timeout=60, cwd=tmpdir_short,
                       env={**__import__("os").environ, "TINYTOWND_HTTP_LISTEN": "127.0.0.1:1"})
    assert r.returncode == 0, r.stderr
    assert "dashboard" not in r.stderr


def test_sigabrt_leaves_a_traceback_of_every_thread(tmpdir_short):
    d = web_daemon(tmpdir_short, agents=1, http={"listen": None})
    try:
        d.start()
        d.proc.send_signal(signal.SIGABRT)
        assert d.proc.wait(20) == -signal.SIGABRT
        err = (tmpdir_short / "stderr.log").read_text()
        assert "Fatal Python error: Aborted" in err
        assert "Current thread" in err or "Thread 0x" in err
        # (a frame-by-frame traceback follows when the loop is stuck in Python code, as under the
        # watchdog; an idle daemon sits in the event loop's C code: "<no Python frame>")
        assert 'File "' in err or "<no Python frame>" in err
    finally:
        d.cleanup()
