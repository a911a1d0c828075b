"""Keeps one worker process alive: the embedded default restarts it when it dies."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from .redis_server import die_with_parent

log = logging.getLogger(__name__)


def worker_command(queues: str = "gpu", concurrency: int = 1, pool: str = "prefork") -> list[str]:
    return [
        sys.executable,
        "-m",
        "tumorsynth.cli",
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
    ]


class WorkerSupervisor:
    def __init__(self, env: dict[str, str], command: list[str] | None = None, backoff: float = 1.0):
        self.env, self.command, self.backoff = env, command or worker_command(), backoff
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> None:
        # Its own process group, so stopping it takes its pool children too.
        self.proc = subprocess.Popen(
            self.command, env=self.env, start_new_session=True, preexec_fn=die_with_parent(os.getpid())
        )
        log.info("worker started (pid %d)", self.proc.pid)

    def start(self) -> WorkerSupervisor:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            if self.proc and self.proc.poll() is not None:
                log.warning("worker exited with %s; restarting", self.proc.returncode)
                self.restarts += 1
                time.sleep(self.backoff)
                if not self._stop.is_set():
                    self._spawn()

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
