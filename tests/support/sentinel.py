"""A highly available Redis for the tests: one primary, replicas and three real `redis-sentinel`
processes, all on loopback ephemeral ports in a temp dir, started and stopped by the test.

Sentinel's down-after-milliseconds is DOWN_AFTER_MS (small, so a kill -9 fails over within a few
seconds); `failover()` asks for a SENTINEL FAILOVER and `kill_primary()` is a kill -9 of the
primary; both wait until every Sentinel names the new primary and it accepts writes.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from .daemon import free_port

MASTER = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _sentinel_exe() -> list[str]:
    exe = shutil.which("redis-sentinel")
    return [exe] if exe else ["redis-server"]     # redis-server FILE --sentinel is the same


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}


class Node:
    """One redis-server on 127.0.0.1:<port> (TCP, a directory of its own)."""

    def __init__(self, dir: Path, *, port: int | None = None, replica_of: int | None = None,
                 aof_always: bool = False, extra: list[str] | None = None):
        self.dir = Path(dir)
        self.port = port or free_port()
        self.replica_of = replica_of
        self.aof_always = aof_always
        self.extra = list(extra or [])
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "Node":
        self.dir.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log"), "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0"]
        args += (["--appendonly", "yes", "--appendfsync", "always"] if self.aof_always
                 else ["--appendonly", "no"])
        if self.replica_of:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self.proc = subprocess.Popen(args + self.extra, env=_env(), stdin=subprocess.DEVNULL)
        _until_ping(self.client, timeout, f"redis-server :{self.port}", self.dir / "redis.log")
        return self

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, **kw)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown: an AOF is flushed), SIGKILL when it hangs."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class SentinelNode:
    def __init__(self, dir: Path, primary_port: int, quorum: int = 2):
        self.dir = Path(dir)
        self.port = free_port()
        self.primary_port = primary_port
        self.quorum = quorum
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SentinelNode":
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "sentinel.conf"
        conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", "daemonize no",
            f"logfile {self.dir / 'sentinel.log'}",
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} {self.quorum}",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER} 1", ""]))
        exe = _sentinel_exe()
        args = exe + [str(conf)] + (["--sentinel"] if exe == ["redis-server"] else [])
        self.proc = subprocess.Popen(args, env=_env(), stdin=subprocess.DEVNULL)
        _until_ping(self.client, 10, "redis-sentinel", self.dir / "sentinel.log")
        return self

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, **kw)

    def primary(self) -> tuple[str, int] | None:
        try:
            a = self.client(socket_timeout=1).execute_command(
                "SENTINEL", "get-master-addr-by-name", MASTER)
        except (redis.RedisError, OSError):
            return None
        return (a[0], int(a[1])) if a else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class HaRedis:
    """Primary + `replicas` replicas + three Sentinels; `nodes` by port."""

    def __init__(self, dir: Path, *, replicas: int = 1, sentinels: int = 3):
        self.dir = Path(dir)
        self.n_replicas = replicas
        self.n_sentinels = sentinels
        self.nodes: dict[int, Node] = {}
        self.sentinels: list[SentinelNode] = []
        self.failovers = 0

    # ------------------------------------------------------------------ start / stop
    def start(self) -> "HaRedis":
        p = Node(self.dir / "n0").start()
        self.nodes[p.port] = p
        for i in range(self.n_replicas):
            r = Node(self.dir / f"n{i + 1}", replica_of=p.port).start()
            self.nodes[r.port] = r
        self.wait_synced(p.port)
        for i in range(self.n_sentinels):
            self.sentinels.append(SentinelNode(self.dir / f"s{i}", p.port).start())
        self.wait_known()
        return self

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for n in self.nodes.values():
            n.kill()

    def __enter__(self) -> "HaRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ views
    @property
    def sentinel_nodes(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def config(self, **extra) -> dict:
        """The `redis:` section of a daemon config that reaches this Redis."""
        return {"sentinel": {"master": MASTER, "nodes": self.sentinel_nodes}, **extra}

    def primary_port(self) -> int:
        for s in self.sentinels:
            a = s.primary()
            if a:
                return a[1]
        raise RuntimeError("no Sentinel names a primary")

    def primary(self) -> Node:
        return self.nodes[self.primary_port()]

    def wait_synced(self, primary_port: int, timeout: float = 20.0) -> None:
        """Until the primary has all its live replicas online."""
        want = sum(1 for port, n in self.nodes.items() if n.alive and port != primary_port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = self.nodes[primary_port].client(socket_timeout=1).info("replication")
                if info.get("role") == "master" and \
                        sum(1 for k, v in info.items() if k.startswith("slave")
                            and isinstance(v, dict) and v.get("state") == "online") >= want:
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"replicas of :{primary_port} did not sync")

    def wait_known(self, timeout: float = 20.0) -> None:
        """Until every Sentinel knows the replicas and the other Sentinels (needed for a
        failover to be authorised)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = True
            for s in self.sentinels:
                try:
                    m = s.client(socket_timeout=1).execute_command("SENTINEL", "master", MASTER)
                    d = m if isinstance(m, dict) else dict(zip(m[::2], m[1::2]))
                    if int(d["num-other-sentinels"]) < len(self.sentinels) - 1 or \
                            int(d["num-slaves"]) < 1:
                        ok = False
                except (redis.RedisError, OSError, KeyError, TypeError, ValueError):
                    ok = False
            if ok:
                return
            time.sleep(0.1)
        raise RuntimeError("Sentinels did not discover each other")

    # ------------------------------------------------------------------ failovers
    def _wait_moved(self, old: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = {s.primary() for s in self.sentinels}
            if len(seen) == 1:
                a = seen.pop()
                if a and a[1] != old:
                    try:
                        c = self.nodes[a[1]].client(socket_timeout=1)
                        if c.info("replication").get("role") == "master":
                            c.set("tt-test:probe", "1")
                            return a[1]
                    except (redis.RedisError, OSError):
                        pass
            time.sleep(0.05)
        raise RuntimeError(f"no failover away from :{old} within {timeout} s")

    def failover(self, timeout: float = 30.0, before=None, demoted: bool = True) -> int:
        """SENTINEL FAILOVER (a planned switch); the new primary's port once it takes writes and
        (with `demoted`) the old one is demoted: until the Sentinels convert it, ~10 s later,
        the old one is still a writable master. `before()` runs right before the request."""
        old = self.primary_port()
        deadline = time.monotonic() + timeout
        if before is not None:
            before()
        while True:
            try:
                self.sentinels[0].client(socket_timeout=2).execute_command(
                    "SENTINEL", "FAILOVER", MASTER)
                break
            except redis.ResponseError as e:   # INPROG / NOGOODSLAVE right after a change
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SENTINEL FAILOVER refused: {e}") from None
                time.sleep(0.2)
        new = self._wait_moved(old, timeout)
        self.failovers += 1
        if not demoted:
            return new
        # until the old primary is demoted (before that it still takes writes, then loses them)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.nodes[old].client(socket_timeout=1).info("replication").get(
                        "role") == "slave":
                    break
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.05)
        return new

    def kill_primary(self, *, restart: bool = True, timeout: float = 30.0) -> int:
        """kill -9 of the primary; waits for Sentinel to promote the replica. With `restart`,
        the dead node comes back (Sentinel turns it into a replica of the new primary) so the
        next failover has a replica to promote."""
        old = self.primary_port()
        node = self.nodes[old]
        node.kill()
        new = self._wait_moved(old, timeout)
        self.failovers += 1
        if restart:
            node.replica_of = new
            node.start()
            self.wait_synced(new)
        return new

    def replica_ports(self) -> list[int]:
        p = self.primary_port()
        return [port for port, n in self.nodes.items() if n.alive and port != p]


# ----------------------------------------------------------------------------- load helpers
def master_client(ha: HaRedis) -> redis.Redis:
    """A test-side client that follows the primary through the Sentinels."""
    from redis.sentinel import Sentinel
    s = Sentinel([("127.0.0.1", n.port) for n in ha.sentinels],
                 sentinel_kwargs={"socket_timeout": 1.0})
    return s.master_for(MASTER, decode_responses=True, socket_timeout=5.0,
                        socket_connect_timeout=1.0)


def _until_ping(client, timeout: float, what: str, log) -> None:
    """Until client(socket_timeout=1) answers PING, or RuntimeError with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client(socket_timeout=1).ping():
                return
        except (redis.RedisError, OSError):
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not come up: " + log.read_text()[-2000:])


def completed_count(town, tids) -> int:
    """How many of `tids` are completed, read again while the primary moves."""
    def count():
        p = town.r.pipeline(transaction=False)
        for t in tids:
            p.hget(town.keys.task(t), "state")
        return sum(1 for s in p.execute() if s == "completed")
    return retrying(count)


def retrying(fn, timeout: float = 60.0):
    """fn() until it does not raise a Redis error (the primary moving under the test)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
                redis.ResponseError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def agent_cli(dir: Path, sleep_s: float = 0.01) -> str:
    """An agent command that logs START/END per task to dir/agent.log and proves, in its own
    log, that no agent runs twice at once: it holds dir/locks/<agent id> while it runs; a second
    copy beside it appends a line to dir/violations."""
    (dir / "locks").mkdir(parents=True, exist_ok=True)
    log, locks, viol = dir / "agent.log", dir / "locks", dir / "violations"
    lk = f"{locks}/$TINYTOWN_AGENT_ID"
    # a lock left by a copy that was killed (its daemon died: kill -9) is not a second run:
    # only a holder that is still alive counts
    return (f'cat >/dev/null; if ! mkdir {lk} 2>/dev/null; then o=$(cat {lk}/pid 2>/dev/null); '
            f'if [ -n "$o" ] && kill -0 "$o" 2>/dev/null; then '
            f'echo "$TINYTOWN_AGENT_ID $TINYTOWN_TASK_ID $o" >> {viol}; fi; fi; '
            f'echo $$ > {lk}/pid; '
            f'echo "START $TINYTOWN_TASK_ID $TINYTOWN_AGENT_ID $$" >> {log}; sleep {sleep_s}; '
            f'echo "END $TINYTOWN_TASK_ID" >> {log}; rm -rf {lk}; echo ok')


def agent_log(dir: Path) -> tuple[dict[str, int], list[str]]:
    """(starts per task id, violation lines) from an agent_cli's files."""
    starts: dict[str, int] = {}
    p = dir / "agent.log"
    for line in (p.read_text().splitlines() if p.exists() else []):
        if line.startswith("START "):
            tid = line.split()[1]
            starts[tid] = starts.get(tid, 0) + 1
    v = dir / "violations"
    return starts, (v.read_text().splitlines() if v.exists() else [])


FAST_RUNTIME = {"heartbeat_interval_s": 0.5, "lease_ttl_s": 5.0, "stale_after_s": 5.0,
                "sweep_interval_s": 0.5, "retry_backoff_s": 0.05, "block_timeout_s": 0.5}
