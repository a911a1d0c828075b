"""A batch whose bank masks cannot be placed is a 422 naming ``masks`` and the class, and nothing is stored or
queued (it was a 500 after ~25 s, with a batch record and canceled jobs left behind)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import ALPHA, make_settings
from tests.support.volumes import nifti_bytes


@pytest.fixture()
def own_bank(redis_server, s3_endpoint, model_dir):
    """An app with a bucket of its own (an empty bank) and a Redis database of its own; no worker reads its queue."""
    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    s = make_settings(redis_server, s3_endpoint, model_dir, redis_url=redis_server.url.rsplit("/", 1)[0] + "/5",
                      family_queues={"ldm": "parked-plan"})
    make_store(s).ensure_bucket()
    app = create_app(s)
    app.state.services.redis.flushdb()
    with TestClient(app) as c:
        yield c, app.state.services
    app.state.services.redis.flushdb()


def head_filling_mask() -> bytes:
    from tumorsynth.jobs.maskbank import BANK_SHAPE
    from tumorsynth.imaging.templates import brats_grid_affine

    m = np.zeros(BANK_SHAPE, np.int16)
    m[20:220, 20:220, 10:145] = 2  # oedema over most of the head
    m[60:180, 60:180, 40:115] = 1  # and a core inside it
    return nifti_bytes(m, brats_grid_affine())


def test_a_bank_mask_that_cannot_be_placed_is_422_and_leaves_nothing(own_bank):
    client, services = own_bank
    r = client.post("/v1/masks", headers=ALPHA, files={
        "request": (None, json.dumps({"tumor_class": "LGG"}), "application/json"),
        "mask": ("m.nii.gz", head_filling_mask(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    before = sorted(o.key for o in services.store.list(""))
    batch = {"model": "ldm/tiny@1", "class_counts": {"LGG": 1, "HGG": 2}, "target": "balance", "seed": 1}
    r = client.post("/v1/batches", json=batch, headers=ALPHA)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text[:300]
    (err,) = r.json()["errors"]
    assert err["field"] == "masks" and "LGG" in err["message"]
    assert sorted(o.key for o in services.store.list("")) == before
    keys = [k for k in services.redis.scan_iter() if k.startswith((b"ts:batch", b"ts:job", b"ts:tenant"))]
    assert keys == [] and services.redis.llen("parked-plan") == 0
