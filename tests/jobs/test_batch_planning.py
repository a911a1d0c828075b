"""Bank masks that cannot be placed: refused when uploaded (a tumour larger than can fit in the template brain), and
one banked before that check makes a batch a 422 naming ``masks`` and the class, at once, with nothing stored or
queued (it was a 500 after ~25 s of placement tries, with a batch record and canceled jobs left behind)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import ALPHA, make_settings
from tests.support.volumes import nifti_bytes
from tumorsynth.jobs import keys as redis_keys


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
    from tumorsynth.imaging.templates import brats_grid_affine
    from tumorsynth.jobs.maskbank import BANK_SHAPE

    m = np.zeros(BANK_SHAPE, np.int16)
    m[20:220, 20:220, 10:145] = 2  # oedema over most of the head
    m[60:180, 60:180, 40:115] = 1  # and a core inside it
    return nifti_bytes(m, brats_grid_affine())


def test_a_head_filling_mask_is_refused_when_uploaded(own_bank):
    client, services = own_bank
    r = client.post("/v1/masks", headers=ALPHA, files={
        "request": (None, json.dumps({"tumor_class": "LGG"}), "application/json"),
        "mask": ("m.nii.gz", head_filling_mask(), "application/octet-stream")})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "mask", r.text[:300]
    assert "ml" in r.json()["errors"][0]["message"] and services.store.list("") == []


def test_a_banked_mask_that_cannot_be_placed_makes_the_batch_422_and_leaves_nothing(own_bank):
    from tumorsynth.storage.keys import mask_bank_key

    client, services = own_bank
    # banked before uploads were checked: written straight to the store, as the bank stores masks
    services.store.put_bytes(mask_bank_key("alpha", "mask_0190000000000000000000000000abcd", "mask.nii.gz"),
                             head_filling_mask(), "application/gzip", {"class": "LGG"})
    before = sorted(o.key for o in services.store.list(""))
    batch = {"model": "ldm/tiny@1", "class_counts": {"LGG": 1, "HGG": 2}, "target": "balance", "seed": 1}
    started = time.monotonic()
    r = client.post("/v1/batches", json=batch, headers=ALPHA)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text[:300]
    assert time.monotonic() - started < 20
    (err,) = r.json()["errors"]
    assert err["field"] == "masks" and "LGG" in err["message"]
    assert sorted(o.key for o in services.store.list("")) == before
    ours = tuple(f"{redis_keys.PREFIX}{n}".encode() for n in ("batch", "job", "tenant"))
    keys = [k for k in services.redis.scan_iter() if k.startswith(ours)]
    assert keys == [] and services.redis.llen("parked-plan") == 0
