"""Event streams hold no thread, and a tenant's open streams are capped: a real API process, a job that stays
queued, and many open streams of tenant alpha while tenant beta uses the API.

The attack: 60 open streams of one tenant took another tenant's ``GET /v1/jobs`` from 161 ms to 3.9 s, because each
stream held a thread-pool thread while it polled. Here 200 streams must leave the other tenant's p90 under 100 ms
(p99 printed).
"""

from __future__ import annotations

import json
import socket
import statistics
import time

import httpx
import pytest

from tests.conftest import ALPHA, BETA, make_settings
from tests.support.hammer import ApiProcess
from tests.support.services import settings_env
from tests.support.volumes import mask_bytes
from tumorsynth.embedded.redis_server import free_port

STREAMS = 200
CAP = 8


def open_stream(port: int, job_id: str, auth: dict = ALPHA) -> tuple[socket.socket, bytes]:
    """A raw event-stream connection, read up to its first event (or the whole answer when refused)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: {auth['Authorization']}\r\n\r\n".encode()
    )
    got = b""
    while b"event: status" not in got and b"}" not in got.partition(b"\r\n\r\n")[2]:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return s, got


def start_api(redis_server, s3_endpoint, model_dir, log_path, cap: int) -> tuple[ApiProcess, str]:
    from tumorsynth.storage import make_store

    s = make_settings(
        redis_server, s3_endpoint, model_dir, family_queues={"ldm": "parked-sse"}, max_event_streams_per_tenant=cap
    )
    make_store(s).ensure_bucket()
    proc = ApiProcess(settings_env(s), free_port(), log_path).start()
    files = {
        "request": (None, json.dumps({"model": "ldm/tiny@1"}), "application/json"),
        "mask": ("m.nii.gz", mask_bytes((24, 28, 20)), "application/octet-stream"),
    }
    job = httpx.post(f"{proc.base_url}/v1/jobs", files=files, headers=ALPHA, timeout=30)
    assert job.status_code == 202, job.text
    return proc, job.json()["id"]


@pytest.fixture()
def api_many(redis_server, s3_endpoint, model_dir, tmp_path):
    proc, job_id = start_api(redis_server, s3_endpoint, model_dir, tmp_path / "api.log", cap=STREAMS + 10)
    yield proc, job_id
    proc.stop()


@pytest.fixture()
def api_capped(redis_server, s3_endpoint, model_dir, tmp_path):
    proc, job_id = start_api(redis_server, s3_endpoint, model_dir, tmp_path / "api.log", cap=CAP)
    yield proc, job_id
    proc.stop()


def latencies(base_url: str, path: str, n: int = 50) -> list[float]:
    out = []
    with httpx.Client(base_url=base_url, headers=BETA, timeout=60) as client:
        for _ in range(n):
            t = time.monotonic()
            assert client.get(path).status_code == 200
            out.append(time.monotonic() - t)
            time.sleep(0.05)
    return out


def test_open_streams_of_one_tenant_do_not_slow_another_tenant(api_many):
    proc, job_id = api_many
    quiet = latencies(proc.base_url, "/v1/jobs")
    streams = [open_stream(proc.port, job_id) for _ in range(STREAMS)]
    try:
        assert all(b"event: status" in got for _, got in streams)
        time.sleep(2.0)  # the streams are idle now, polling for changes
        busy = latencies(proc.base_url, "/v1/jobs")
    finally:
        for s, _ in streams:
            s.close()
    p99 = statistics.quantiles(busy, n=100)[98]
    print(
        f"beta GET /v1/jobs median/p99: {statistics.median(quiet) * 1000:.0f}/"
        f"{statistics.quantiles(quiet, n=100)[98] * 1000:.0f} ms quiet, {statistics.median(busy) * 1000:.0f}/"
        f"{p99 * 1000:.0f} ms with {STREAMS} open streams of alpha"
    )
    # p90 and median, not p99: on a shared 2-core machine one sample in 50 can stall for a scheduler hiccup even
    # with no stream open (the figure printed above); held threads made every sample ~3.9 s
    assert statistics.quantiles(busy, n=10)[8] < 0.1 and statistics.median(busy) < 0.05, sorted(busy)


def test_a_tenants_streams_beyond_the_cap_are_429_and_others_are_unaffected(api_capped):
    proc, job_id = api_capped
    held = [open_stream(proc.port, job_id) for _ in range(CAP)]
    try:
        assert all(b"event: status" in got for _, got in held)
        s, refused = open_stream(proc.port, job_id)
        s.close()
        head, _, body = refused.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429") and b"application/problem+json" in head and b"retry-after" in head
        assert json.loads(body)["code"] == "too_many_event_streams"
        # another tenant is not counted against alpha (beta gets a 404 for alpha's job, not a 429)
        s, other = open_stream(proc.port, job_id, BETA)
        s.close()
        assert other.startswith(b"HTTP/1.1 404")
        held.pop()[0].close()  # one closed: alpha may open one again
        deadline = time.monotonic() + 10
        while True:
            s, again = open_stream(proc.port, job_id)
            if b"event: status" in again:
                held.append((s, again))
                break
            s.close()
            assert time.monotonic() < deadline, again[:200]
            time.sleep(0.2)
    finally:
        for s, _ in held:
            s.close()
