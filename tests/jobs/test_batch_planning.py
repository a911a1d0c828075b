"""Batch planning in a worker (issue 14, #10, #7): ``POST /v1/batches`` answers 202 at once with the batch in
``planning`` (it took ~2.3 s per bank subject, 28 s for 12, inside the request); the planner makes the masks and
the jobs; a bank mask that cannot be placed ends the batch ``failed`` with an error naming ``masks`` and the class,
no job queued (it was a 500 after ~25 s). A mask too large to place is refused when it is uploaded to the bank.

The planner runs here in the test process, on the app's own services, as the worker's ``plan_batch`` task runs it:
no worker consumes this app's queue, so what is queued stays visible.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import ALPHA, make_settings
from tests.support.services import queue_depth
from tests.support.volumes import nifti_bytes
from tumorsynth.jobs import keys as redis_keys


@pytest.fixture()
def own_bank(redis_server, s3_endpoint, model_dir):
    """An app with a bucket of its own (an empty bank) and a Redis database of its own; no worker reads its queue."""
    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    s = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/5",
        family_queues={"ldm": "parked-plan"},
    )
    make_store(s).ensure_bucket()
    app = create_app(s)
    app.state.services.redis.flushdb()
    with TestClient(app) as c:
        yield c, app.state.services
    app.state.services.redis.flushdb()


def head_filling_mask() -> bytes:
    from tumorsynth.imaging.templates import brats_grid_affine
    from tumorsynth.jobs.maskbank import BANK_SHAPE

    m = np.zeros(BANK_SHAPE, np.int16)
    m[20:220, 20:220, 10:145] = 2  # oedema over most of the head
    m[60:180, 60:180, 40:115] = 1  # and a core inside it
    return nifti_bytes(m, brats_grid_affine())


def test_a_head_filling_mask_is_refused_when_uploaded(own_bank):
    client, services = own_bank
    r = client.post(
        "/v1/masks",
        headers=ALPHA,
        files={
            "request": (None, json.dumps({"tumor_class": "LGG"}), "application/json"),
            "mask": ("m.nii.gz", head_filling_mask(), "application/octet-stream"),
        },
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "mask", r.text[:300]
    assert "ml" in r.json()["errors"][0]["message"] and services.store.list("") == []


def bank_batch(client, **extra) -> dict:
    body = {"model": "ldm/tiny@1", "class_counts": {"LGG": 1, "HGG": 13}, "target": "balance", "seed": 1} | extra
    started = time.monotonic()
    r = client.post("/v1/batches", json=body, headers=ALPHA)
    took = time.monotonic() - started
    assert r.status_code == 202, r.text[:300]
    planned = sum(r.json()["plan"].values())
    body = r.json()
    assert body["status"] == "planning" and body["jobs"] == [] and body["request_counts"]["total"] == planned
    assert took < 1.0, f"POST /v1/batches took {took:.2f} s"  # 12 bank subjects: 28 s when planned in the request
    return r.json()


def test_a_batch_is_planned_in_a_worker_and_answers_at_once(own_bank):
    from tumorsynth.jobs.batch_planning import BatchPlanner

    client, services = own_bank
    batch = bank_batch(client)
    assert queue_depth(services.redis, "parked-plan") == 1  # the planning task, no job yet
    assert BatchPlanner(services.batches).plan(batch["id"]) == "planned"
    done = client.get(f"/v1/batches/{batch['id']}", headers=ALPHA).json()
    assert done["status"] == "running" and len(done["jobs"]) == 12 and done["request_counts"]["total"] == 12
    assert queue_depth(services.redis, "parked-plan") == 1 + 12
    assert BatchPlanner(services.batches).plan(batch["id"]) == "not planning"  # a redelivered task: no new jobs
    assert len(client.get(f"/v1/batches/{batch['id']}", headers=ALPHA).json()["jobs"]) == 12


def test_a_batch_canceled_while_planning_makes_no_jobs(own_bank):
    from tumorsynth.jobs.batch_planning import BatchPlanner

    client, services = own_bank
    batch = bank_batch(client)
    assert client.post(f"/v1/batches/{batch['id']}/cancel", headers=ALPHA).json()["status"] == "canceling"
    assert BatchPlanner(services.batches).plan(batch["id"]) == "canceled"
    done = client.get(f"/v1/batches/{batch['id']}", headers=ALPHA).json()
    assert done["status"] == "canceled" and done["jobs"] == [], done
    assert list(services.redis.scan_iter(f"{redis_keys.PREFIX}job:*")) == []


def test_a_banked_mask_that_cannot_be_placed_fails_the_batch_cleanly(own_bank):
    from tumorsynth.jobs.batch_planning import BatchPlanner
    from tumorsynth.storage.keys import mask_bank_key

    client, services = own_bank
    # banked before uploads were checked: written straight to the store, as the bank stores masks
    services.store.put_bytes(
        mask_bank_key("alpha", "mask_0190000000000000000000000000abcd", "mask.nii.gz"),
        head_filling_mask(),
        "application/gzip",
        {"class": "LGG"},
    )
    before = sorted(o.key for o in services.store.list(""))
    batch = bank_batch(client, class_counts={"LGG": 1, "HGG": 2})
    started = time.monotonic()
    assert BatchPlanner(services.batches).plan(batch["id"]) == "failed"
    assert time.monotonic() - started < 20
    r = client.get(f"/v1/batches/{batch['id']}", headers=ALPHA)
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text[:300]
    err = r.json()["error"]
    assert err["code"] == "planning_failed" and "masks" in err["message"] and "LGG" in err["message"], err
    assert sorted(o.key for o in services.store.list("")) == before
    assert list(services.redis.scan_iter(f"{redis_keys.PREFIX}job:*")) == []
    assert queue_depth(services.redis, "parked-plan") == 1  # the planning task's own message, and no job
    assert client.post(f"/v1/batches/{batch['id']}/cancel", headers=ALPHA).status_code == 409
