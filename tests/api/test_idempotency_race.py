"""One Idempotency-Key sent by many concurrent requests to a real API process: one job, whatever the timing.

The requests race through validation and reach the key at the same moment; the first to claim it creates the job,
the others wait for it and replay its answer (same body) or are refused (another body).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from tests.conftest import ALPHA, make_settings
from tests.support.hammer import ApiProcess
from tests.support.services import queue_depth, settings_env
from tests.support.volumes import mask_bytes
from tumorsynth.embedded.redis_server import free_port
from tumorsynth.jobs import keys

N = 16
MODEL = "ldm/tiny@1"


@pytest.fixture(scope="module")
def api(redis_server, s3_endpoint, model_dir, tmp_path_factory):
    from tumorsynth.storage import make_store

    s = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/12",
        family_queues={"ldm": "parked-idem"},
    )
    make_store(s).ensure_bucket()
    r = redis.Redis.from_url(s.redis_url)
    r.flushdb()
    proc = ApiProcess(settings_env(s), free_port(), tmp_path_factory.mktemp("idem") / "api.log").start()
    yield proc, r
    proc.stop()


def fire_together(base_url: str, key: str, seeds: list[int]) -> list[httpx.Response]:
    """Every request built beforehand, then sent at once: a barrier releases all threads together."""
    mask = mask_bytes()
    gate = threading.Barrier(len(seeds))

    def one(seed: int) -> httpx.Response:
        files = {
            "request": (None, json.dumps({"model": MODEL, "seed": seed}), "application/json"),
            "mask": ("m.nii.gz", mask, "application/octet-stream"),
        }
        with httpx.Client(base_url=base_url, timeout=60) as c:
            gate.wait()
            return c.post("/v1/jobs", files=files, headers=ALPHA | {"Idempotency-Key": key})

    with ThreadPoolExecutor(len(seeds)) as pool:
        return list(pool.map(one, seeds))


def jobs_of(r: redis.Redis) -> set[str]:
    return {m.decode() for m in r.zrange(keys.tenant_jobs("alpha"), 0, -1)}


def test_concurrent_identical_requests_with_one_key_make_one_job(api):
    proc, r = api
    before = jobs_of(r)
    answers = fire_together(proc.base_url, "race-same", [7] * N)
    assert [a.status_code for a in answers] == [202] * N, [a.text[:200] for a in answers if a.status_code != 202]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1, f"{len(ids)} jobs for one key"
    assert jobs_of(r) - before == ids
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == N - 1
    assert queue_depth(r, "parked-idem") == len(jobs_of(r))  # one message per job, none for a replay


def test_concurrent_different_bodies_with_one_key_make_one_job_and_refuse_the_rest(api):
    proc, r = api
    before = jobs_of(r)
    answers = fire_together(proc.base_url, "race-different", list(range(N)))
    created = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 422]
    assert len(created) == 1 and len(refused) == N - 1, [a.status_code for a in answers]
    assert all(a.json()["errors"][0]["field"] == "Idempotency-Key" for a in refused)
    assert jobs_of(r) - before == {created[0].json()["id"]}
