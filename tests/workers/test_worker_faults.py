"""A worker SIGKILLed mid-sampling: its lease lapses, the reaper requeues, the job succeeds once (attempts 2)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import submit, wait_status
from tests.conftest import make_settings
from tests.support.services import WorkerProcess
from tests.support.volumes import mask_bytes

MODEL = "ldm/tiny@1"


@pytest.fixture(scope="module")
def faults(redis_server, s3_endpoint, model_dir):
    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    s = make_settings(redis_server, s3_endpoint, model_dir, family_queues={"ldm": "faults"})
    make_store(s).ensure_bucket()
    app = create_app(s)
    with TestClient(app) as c:
        yield s, c, app.state.services


def test_killed_worker_job_succeeds_exactly_once(faults, tmp_path):
    settings, client, services = faults
    first = WorkerProcess(settings, tmp_path / "first.log", queues="faults").start()
    second = None
    try:
        job = submit(client, {"model": MODEL, "sampler": {"name": "ddpm", "steps": 600}},
                     {"mask": mask_bytes()}).json()
        wait_status(client, job["id"], {"running"}, pred=lambda j: j["progress"]["completed_steps"] > 10)
        first.kill()
        second = WorkerProcess(settings, tmp_path / "second.log", queues="faults").start()
        done = wait_status(client, job["id"], {"succeeded", "failed"}, timeout=180)
        assert done["status"] == "succeeded", done["error"]
        assert done["attempts"] == 2
        stored = services.store.list(f"tenants/alpha/jobs/{job['id']}/outputs/")
        assert len(stored) == len(done["outputs"]) == 10  # 4 contrasts + the mask, each with a sidecar
        assert len({o["name"] for o in done["outputs"]}) == 10
    finally:
        first.kill()
        if second:
            second.stop()
