"""The VQGAN family through the job API: class in, tumour ROI out; the class is required and checked."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ALPHA
from tests.support.volumes import load, mask_bytes

from .helpers import submit, wait_status

MODEL = "vqgan/tiny@1"


def roi(client, job, name) -> np.ndarray:
    r = client.get(f"/v1/jobs/{job['id']}/outputs/{name}", headers=ALPHA, follow_redirects=False)
    if r.status_code == 307:
        import httpx

        return load(httpx.get(r.headers["location"]).content).get_fdata()
    return load(r.content).get_fdata()


def test_vqgan_is_listed_as_class_to_roi(client):
    (m,) = [m for m in client.get("/v1/models", headers=ALPHA).json()["models"] if m["id"] == MODEL]
    assert m["task"] == "class_to_roi" and m["classes"] == ["LGG", "HGG"] and m["inputs"] == []
    assert {s["name"] for s in m["samplers"]} == {"maskgit", "ar"}


@pytest.mark.parametrize("tumor_class", ["LGG", "HGG"])
def test_class_jobs_succeed_and_seeds_differ(client, worker, tumor_class):
    jobs = [submit(client, {"model": MODEL, "tumor_class": tumor_class, "num_samples": 2, "seed": s}).json()
            for s in (1, 2)]
    done = [wait_status(client, j["id"], {"succeeded", "failed"}) for j in jobs]
    assert all(d["status"] == "succeeded" for d in done), [d["error"] for d in done]
    a = [roi(client, d, "sample-0_flair.nii.gz") for d in done]
    assert a[0].shape == a[1].shape and len(a[0].shape) == 3
    assert not np.array_equal(a[0], a[1])
    assert len([o for o in done[0]["outputs"] if o["kind"] == "image"]) == 2
    side = client.get(f"/v1/jobs/{done[0]['id']}/outputs/sample-0_flair.json", headers=ALPHA, follow_redirects=False)
    assert side.status_code in (200, 307)


@pytest.mark.parametrize("body,files,field", [
    ({"model": MODEL}, {}, "tumor_class"),
    ({"model": MODEL, "tumor_class": "meningioma"}, {}, "tumor_class"),
    ({"model": MODEL, "tumor_class": "LGG"}, {"mask": mask_bytes((20, 20, 20))}, "mask"),
    ({"model": MODEL, "tumor_class": "LGG", "sampler": {"name": "ddpm"}}, {}, "sampler.name"),
])
def test_vqgan_requests_are_checked(client, body, files, field):
    r = submit(client, body, files)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field
