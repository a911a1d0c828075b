"""Metrics and queues against a real worker: counts move with the jobs."""

from __future__ import annotations

import numpy as np
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
    job = submit(
        client,
        {"model": MODEL, "seed": 1, "sampler": {"name": "dpm++", "steps": 5}},
        {"mask": mask_bytes((40, 44, 30))},
    ).json()
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


def test_events_stream_and_preview(client, worker):
    job = submit(
        client,
        {"model": MODEL, "seed": 2, "sampler": {"name": "ddim", "steps": 20}},
        {"mask": mask_bytes((40, 44, 30))},
    ).json()
    seen = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=ALPHA) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                import json

                seen.append(json.loads(line[6:]))
                if seen[-1]["status"] in ("succeeded", "failed"):
                    break
    assert seen[0]["status"] in ("queued", "running") and seen[-1]["status"] == "succeeded"
    assert any(e["status"] == "running" and e["completed_steps"] > 0 for e in seen)
    png = client.get(f"/v1/jobs/{job['id']}/preview.png", headers=ALPHA)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    from io import BytesIO

    from PIL import Image

    img = Image.open(BytesIO(png.content))
    assert img.size[0] > 300 and img.size[1] > 400  # 3 views × 4 contrasts
    red = np.asarray(img.convert("RGB"))
    assert ((red[..., 0] == 255) & (red[..., 1] == 40)).any()  # the mask outline is drawn


def test_gpu_memory_gauge_from_worker_readings(client, worker, settings):
    import redis

    from tumorsynth.workers import gpu_memory

    r = redis.Redis.from_url(settings.redis_url)
    job = submit(
        client,
        {"model": MODEL, "seed": 3, "sampler": {"name": "dpm++", "steps": 5}},
        {"mask": mask_bytes((40, 44, 30))},
    ).json()
    wait_status(client, job["id"], {"succeeded"})
    gauge = {k: v for k, v in samples(client).items() if k[0] == "tumorsynth_worker_gpu_memory_bytes"}
    assert gauge == {}, "a CPU worker publishes no GPU memory"
    readings = [
        {"device": "cuda:0", "allocated": 3 * 2**30, "reserved": 4 * 2**30},
        {"device": "cuda:1", "allocated": 0, "reserved": 2**20},
    ]
    gpu_memory.publish(r, "gpuhost:4242", 4243, readings, ttl_seconds=2)
    gpu_memory.publish(r, "gpuhost:4242", 4244, readings[:1], ttl_seconds=2)  # a second pool process
    m = samples(client)
    key = lambda dev, kind: (
        "tumorsynth_worker_gpu_memory_bytes",
        (("device", dev), ("kind", kind), ("worker", "gpuhost:4242")),
    )
    assert m[key("cuda:0", "allocated")] == 6 * 2**30 and m[key("cuda:0", "reserved")] == 8 * 2**30
    assert m[key("cuda:1", "reserved")] == 2**20
    import time

    time.sleep(2.5)  # readings expire unless the worker refreshes them
    assert not any(k[0] == "tumorsynth_worker_gpu_memory_bytes" for k in samples(client))
