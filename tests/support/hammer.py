"""Both malformed corpora as plain HTTP requests, for sending many times to a real API process over a socket.

Used by ``tests/api/test_rss_bound.py`` (a few rounds, a bound) and ``benchmarks/malformed_rss.py`` (many rounds,
the figure).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.api.bad_requests import BOUNDARY, MODEL, file, multipart, req
from tests.api.bad_requests import corpus as request_corpus
from tests.imaging.malformed import corpus as file_corpus


@dataclass(frozen=True)
class Shot:
    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


def shots(auth: dict[str, str]) -> list[Shot]:
    """Every malformed request, and every malformed file submitted as a job's mask."""
    out = [Shot(c.name, c.method, c.path, c.request_headers(auth), c.body, c.status) for c in request_corpus()]
    form = auth | {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    out += [
        Shot(f"file: {name}", "POST", "/v1/jobs", form, multipart(req({"model": MODEL}), file("mask", data)), status)
        for name, data, status in file_corpus()
    ]
    return out


def fire(client: httpx.Client, batch: list[Shot]) -> list[str]:
    """Send each request once; the names of those not answered as expected (status and problem+json)."""
    wrong = []
    for s in batch:
        r = client.request(s.method, s.path, headers=s.headers, content=s.body or None)
        if r.status_code != s.status or r.headers.get("content-type") != "application/problem+json":
            wrong.append(f"{s.name}: {r.status_code} {r.text[:120]}")
    return wrong


def rss_kib(pid: int) -> tuple[int, int]:
    """(resident set size, its peak) of a process, in KiB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class ApiProcess:
    """``tumorsynth serve --no-worker`` in its own process group: the API alone, as deployed."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path):
        self.env, self.port, self.log_path = env, port, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: float = 120.0) -> ApiProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tumorsynth.cli", "serve", "--port", str(self.port), "--no-worker"],
            env=self.env,
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/livez", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer /livez in {wait}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
