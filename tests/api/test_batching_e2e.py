"""Cross-job batching end to end: a ``--pool threads`` worker samples three queued jobs as one batch, and a job's
stored outputs are byte-identical to the same job run alone (batch-invariant kernels on the CPU)."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from tests.support.services import WorkerProcess, wait_for
from tests.support.volumes import mask_bytes, oblique_affine

from .helpers import submit, wait_status

QUEUE = "gpu-batching"


@pytest.fixture(scope="module")
def batching(redis_server, s3_endpoint, model_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    families = dict.fromkeys(("ldm", "vqgan", "tavit", "stylegan2"), QUEUE)  # a queue no other test's worker reads
    s = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        family_queues=families,
        batch_invariant=True,
        batch_max_wait_ms=3000,
        batch_max_samples=8,
    )
    make_store(s).ensure_bucket()
    log = tmp_path_factory.mktemp("logs") / "batching-worker.log"
    worker = WorkerProcess(s, log, queues=QUEUE, args=("--pool", "threads", "--concurrency", "4"))
    with TestClient(create_app(s)) as client:
        yield client, worker, log
    worker.stop()


def images(job: dict) -> dict[str, str]:
    assert job["status"] == "succeeded", job["error"]
    return {o["name"]: o["sha256"] for o in job["outputs"] if o["kind"] == "image"}


def test_queued_jobs_share_a_batch_and_match_their_runs_alone(batching):
    client, worker, log = batching
    base = {"model": "ldm/tiny@1", "sampler": {"name": "ddim", "steps": 8}, "modalities": ["t1c", "flair"]}
    requests = [
        (base | {"seed": 3, "num_samples": 2}, mask_bytes((64, 72, 40), "brats2023", oblique_affine())),
        (base | {"seed": 9, "tumor_class": "HGG"}, mask_bytes((48, 56, 36), "brats2019", seed=2)),
        (base | {"seed": 3, "output_grid": "model"}, mask_bytes((64, 72, 40), "binary", seed=1)),
    ]
    worker.start()
    solo = []
    for req, mask in requests[:2]:  # one at a time: each is a batch of its own
        job = submit(client, req, {"mask": mask}).json()
        solo.append(images(wait_status(client, job["id"], {"succeeded", "failed"})))
    worker.stop()
    ids = [submit(client, req, {"mask": mask}).json()["id"] for req, mask in requests]  # queued while no worker
    worker.start()
    together = [images(wait_status(client, i, {"succeeded", "failed"})) for i in ids]
    assert together[:2] == solo  # every output's sha256: byte for byte the same volumes
    assert len(together[0]) == 4 and len(together[2]) == 2
    text = wait_for(lambda: "sampled 3 jobs" in log.read_text() and log.read_text(), what="a batch of three")
    assert "sampled 3 jobs (4 samples) as one batch" in text
