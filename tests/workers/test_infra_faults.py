"""The servers around the workers fail: Redis restarts, S3 goes dark mid-upload, the API process restarts.

Each test has its own Redis, S3 path or API process, so the session's shared servers are never disturbed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.api.helpers import wait_status
from tests.conftest import ALPHA
from tests.support.proxy import CuttableProxy
from tests.support.services import WorkerProcess, settings_env, wait_for
from tests.support.volumes import mask_bytes
from tumorsynth.embedded.redis_server import RedisServer, free_port

from .faults import OUTPUTS_PER_JOB, SHAPE, attempts_in_logs, request, settled_attempts, slow, stack


def test_redis_restart_loses_no_queued_or_running_job(s3_endpoint, model_dir, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        with stack(server, s3_endpoint, model_dir) as st:
            w = WorkerProcess(st.settings, tmp_path / "worker.log", queues=st.settings.queue_for("ldm")).start()
            try:
                jobs = [st.submit(slow(15))] + [st.submit(request()) for _ in range(3)]
                wait_status(st.client, jobs[0]["id"], {"running"}, pred=lambda j: j["progress"]["completed_steps"] >= 2)
                assert all(
                    st.client.get(f"/v1/jobs/{j['id']}", headers=ALPHA).json()["status"] == "queued" for j in jobs[1:]
                )
                server.stop()  # SIGTERM: Redis flushes its append-only file and exits
                log = tmp_path / "worker.log"
                wait_for(
                    lambda: any(a.job_id == jobs[0]["id"] and a.outcome for a in attempts_in_logs(log)),
                    timeout=30,
                    what="the running attempt to notice Redis is gone",
                )
                # Celery logs the lost broker connection on its own schedule, sometimes after the attempt's end line
                wait_for(
                    lambda: "Connection to broker lost" in log.read_text(),
                    timeout=30,
                    what="the worker to log the lost broker connection",
                )
                server.start()  # same port, same data directory
                done = [wait_status(st.client, j["id"], {"succeeded", "failed", "canceled"}, timeout=150) for j in jobs]
                assert [d["status"] for d in done] == ["succeeded"] * len(jobs), [d["error"] for d in done]
                assert all(len(st.stored(d["id"])) == len(d["outputs"]) == OUTPUTS_PER_JOB for d in done)
                ran = settled_attempts(log, jobs=[j["id"] for j in jobs])
                assert all(sum(a.outcome == "succeeded" for a in ran if a.job_id == d["id"]) == 1 for d in done)
                # The running attempt gave the job up without failing it; the reaper requeued it after the restart.
                assert [
                    (a.number, a.outcome) for a in sorted(ran, key=lambda a: a.number) if a.job_id == jobs[0]["id"]
                ] == [(1, "store_unreachable"), (2, "succeeded")]
                assert [d["attempts"] for d in done] == [2, 1, 1, 1]
            finally:
                w.stop()
    finally:
        server.stop()


def test_s3_dark_during_upload_retries_then_fails_with_nothing_listed(redis_server, s3_endpoint, model_dir, tmp_path):
    """The line to S3 is cut at the job's second output upload; every retry after that finds it dark."""
    proxy = CuttableProxy(s3_endpoint, pattern=rb"^PUT \S+/outputs/", cut_at=2)
    try:
        # One writer thread: the uploads go one after the other, so the retries counted are the cut upload's alone
        # (with several writers each volume in flight retries too, and still nothing is listed).
        with stack(redis_server, s3_endpoint, model_dir, storage_retries=4, output_writers=1) as st:
            worker_settings = st.settings.model_copy(update={"s3_endpoint": proxy.endpoint})
            w = WorkerProcess(worker_settings, tmp_path / "worker.log", queues=st.settings.queue_for("ldm")).start()
            try:
                job = st.submit(request())
                done = wait_status(st.client, job["id"], {"succeeded", "failed"}, timeout=90)
                assert done["status"] == "failed" and done["error"]["code"] == "storage_unavailable", done["error"]
                assert "unreachable" in done["error"]["message"]
                assert done["outputs"] == []  # the first upload landed, yet nothing is listed
                tries = proxy.refused("PUT", "/outputs/")
                assert len(tries) == 4, "the cut upload and three retries"
                gaps = [b - a for a, b in itertools.pairwise(tries)]
                # Exponential backoff with equal jitter from 0.2 s: each wait is at least half its cap.
                assert all(gap >= 0.1 * 2**i * 0.95 for i, gap in enumerate(gaps)), gaps
                proxy.heal()
                nxt = st.submit(request())
                assert wait_status(st.client, nxt["id"], {"succeeded", "failed"})["status"] == "succeeded"
                ran = {
                    a.job_id: a.outcome for a in settled_attempts(tmp_path / "worker.log", jobs=[job["id"], nxt["id"]])
                }
                assert ran == {job["id"]: "failed", nxt["id"]: "succeeded"}
            finally:
                w.stop()
    finally:
        proxy.close()


class ApiProcess:
    """``tumorsynth serve --no-worker`` against the test's Redis and S3, as a deployment's API container runs."""

    def __init__(self, settings, log_path, port: int):
        self.env, self.log_path, self.port = settings_env(settings), log_path, port
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ApiProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tumorsynth.cli", "serve", "--no-worker", "--port", str(self.port)],
            env=self.env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._ready, timeout=90, what=f"the API on {self.base}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited: {self.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def test_api_restarted_mid_job_leaves_the_job_unaffected(redis_server, s3_endpoint, model_dir, tmp_path):
    with stack(redis_server, s3_endpoint, model_dir) as st:
        w = WorkerProcess(st.settings, tmp_path / "worker.log", queues=st.settings.queue_for("ldm")).start()
        api = ApiProcess(st.settings, tmp_path / "api.log", free_port()).start()
        try:
            with httpx.Client(base_url=api.base, headers=ALPHA, timeout=30) as http:
                r = http.post(
                    "/v1/jobs", files={"request": (None, json.dumps(slow(20))), "mask": ("m.nii.gz", mask_bytes(SHAPE))}
                )
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                wait_for(
                    lambda: http.get(f"/v1/jobs/{job_id}").json()["progress"]["completed_steps"] >= 2,
                    timeout=60,
                    what="the job to be sampling",
                )
                api.kill()
                with pytest.raises(httpx.TransportError):
                    http.get(f"/v1/jobs/{job_id}")
                api.start()
                done = wait_for(lambda: _terminal(http, job_id), timeout=90, what="the job to end")
                assert done["status"] == "succeeded" and done["attempts"] == 1, done
                name = next(o["name"] for o in done["outputs"] if o["modality"] == "flair" and o["kind"] == "image")
                got = http.get(f"/v1/jobs/{job_id}/outputs/{name}", follow_redirects=False)
                body = httpx.get(got.headers["location"]).content if got.status_code == 307 else got.content
                out = next(o for o in done["outputs"] if o["name"] == name)
                assert hashlib.sha256(body).hexdigest() == out["sha256"]
        finally:
            api.kill()
            w.stop()


def _terminal(http: httpx.Client, job_id: str) -> dict | None:
    job = http.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] in {"succeeded", "failed", "canceled"} else None
