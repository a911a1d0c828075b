"""The job store out of reach: a real API process on a Redis of its own, which the test freezes (SIGSTOP) and then
kills. Job reads, lists, ``/metrics``, ``/v1/queues`` and event streams answer 503 problem+json with Retry-After
within the Redis socket timeout (2 s), not a 500 after 10–20 s; and 200 again once Redis is back. ``/metrics/api``
answers 200 with ``tumorsynth_redis_up 0`` in that time (the Redis alert reads it; a failed scrape reads as the API
down).
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from tests.conftest import ALPHA, make_settings
from tests.support.hammer import ApiProcess
from tests.support.services import settings_env
from tests.support.volumes import mask_bytes
from tumorsynth.embedded.redis_server import RedisServer, free_port

ANSWER_WITHIN = 4.0  # the 2 s socket timeout, plus a loaded machine's slack


@pytest.fixture()
def api(s3_endpoint, model_dir, tmp_path):
    redis_server = RedisServer(tmp_path / "redis").start()
    s = make_settings(redis_server, s3_endpoint, model_dir, family_queues={"ldm": "parked-down"})
    from tumorsynth.storage import make_store

    make_store(s).ensure_bucket()
    proc = ApiProcess(settings_env(s), free_port(), tmp_path / "api.log").start()
    with httpx.Client(base_url=proc.base_url, timeout=30, headers=ALPHA) as client:
        files = {
            "request": (None, json.dumps({"model": "ldm/tiny@1"}), "application/json"),
            "mask": ("m.nii.gz", mask_bytes((24, 28, 20)), "application/octet-stream"),
        }
        job = client.post("/v1/jobs", files=files)
        assert job.status_code == 202, job.text
        yield client, redis_server, job.json()["id"], proc
    if redis_server.proc and redis_server.proc.poll() is None:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    proc.stop()
    redis_server.stop()


def reads(job_id: str) -> list[str]:
    return [
        f"/v1/jobs/{job_id}",
        "/v1/jobs",
        "/metrics",
        "/v1/queues",
        f"/v1/jobs/{job_id}/events",
        f"/v1/jobs/{job_id}/webhooks",
        f"/v1/jobs/{job_id}/cancel",
    ]


def assert_all_503(client: httpx.Client, job_id: str, how: str) -> None:
    for path in reads(job_id):
        started = time.monotonic()
        r = client.post(path) if path.endswith("/cancel") else client.get(path)
        took = time.monotonic() - started
        assert r.status_code == 503, f"{how} {path}: {r.status_code} {r.text[:200]}"
        assert r.headers["content-type"] == "application/problem+json" and int(r.headers["retry-after"]) > 0, path
        assert r.json()["code"] == "job_store_unavailable", r.json()
        assert took < ANSWER_WITHIN, f"{how} {path}: answered after {took:.1f} s"
    started = time.monotonic()
    r = client.get("/metrics/api")
    took = time.monotonic() - started
    assert r.status_code == 200 and "\ntumorsynth_redis_up 0.0\n" in r.text, f"{how} /metrics/api: {r.text[-300:]}"
    assert took < ANSWER_WITHIN, f"{how} /metrics/api: {took:.1f} s"


def test_frozen_then_killed_redis_is_503_with_retry_after(api):
    client, redis_server, job_id, proc = api
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        assert_all_503(client, job_id, "frozen:")
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while client.get(f"/v1/jobs/{job_id}").status_code != 200:
        assert time.monotonic() < deadline, "the API did not recover once Redis answered again"
        time.sleep(0.2)
    assert client.get("/v1/jobs").json()["jobs"][0]["id"] == job_id
    with (
        httpx.Client(base_url=proc.base_url, timeout=10, headers=ALPHA) as sse,
        sse.stream("GET", f"/v1/jobs/{job_id}/events") as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "event: status"
        redis_server.kill()  # an open stream ends with an error event, not a broken connection
        rest = list(lines)
    assert "event: error" in rest and any("job_store_unavailable" in line for line in rest), rest
    assert_all_503(client, job_id, "killed:")
    assert proc.proc.poll() is None
    log = proc.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
