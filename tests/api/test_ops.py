"""Metrics and queues against a real worker: counts move with the jobs."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ALPHA
from tests.support.volumes import mask_bytes

from .helpers import submit, wait_status

MODEL = "ldm/tiny@1"


def samples(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_and_queues_follow_the_jobs(client, worker):
    job = submit(client, {"model": MODEL, "seed": 1, "sampler": {"name": "dpm++", "steps": 5}},
                 {"mask": mask_bytes((40, 44, 30))}).json()
    wait_status(client, job["id"], {"succeeded"})
    m = samples(client)
    assert m[("tumorsynth_jobs", (("model", MODEL), ("status", "succeeded")))] >= 1
    assert m[("celery_queue_length", (("queue_name", "gpu"),))] >= 0
    assert m[("tumorsynth_workers_online", (("queue_name", "gpu"),))] >= 1
    assert m[("tumorsynth_job_run_seconds_count", (("model", MODEL),))] >= 1
    assert m[("tumorsynth_sampling_steps_total", (("model", MODEL),))] >= 5
    assert any(k[0] == "celery_worker_up" for k in m)
    q = client.get("/v1/queues", headers=ALPHA).json()
    gpu = next(x for x in q["queues"] if x["name"] == "gpu")
    assert gpu["workers_online"] >= 1 and gpu["oldest_queued_seconds"] >= 0 and q["workers"]
    assert client.get("/v1/queues").status_code == 401
