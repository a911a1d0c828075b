"""The StyleGAN2 family through the job API, from the shipped demo checkpoint and a real worker: class in, 2D slices
(NIfTI (H, W, 1) + PNG + sidecar) out; class, truncation and the rest are checked at submission."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ALPHA
from tests.support.volumes import load, mask_bytes

from .helpers import submit, wait_status

MODEL = "stylegan2/demo-phantom@1"


def fetch(client, job, name) -> bytes:
    r = client.get(f"/v1/jobs/{job['id']}/outputs/{name}", headers=ALPHA, follow_redirects=False)
    if r.status_code == 307:
        import httpx

        return httpx.get(r.headers["location"]).content
    assert r.status_code == 200, r.text
    return r.content


def test_stylegan2_is_listed_as_class_to_slice(client):
    (m,) = [m for m in client.get("/v1/models", headers=ALPHA).json()["models"] if m["id"] == MODEL]
    assert m["task"] == "class_to_slice" and m["classes"] == ["meningioma", "glioma", "pituitary"]
    assert m["inputs"] == [] and [s["name"] for s in m["samplers"]] == ["direct"]
    assert m["output"]["shape"] == [64, 64, 1] and m["trained"]
    assert "phantom" in m["checkpoint"]["trained_on"]


@pytest.mark.parametrize("tumor_class", ["meningioma", "glioma", "pituitary"])
def test_class_jobs_succeed_with_slices_previews_and_sidecars(client, worker, tumor_class):
    job = submit(
        client, {"model": MODEL, "tumor_class": tumor_class, "num_samples": 2, "seed": 4, "truncation": 0.8}
    ).json()
    done = wait_status(client, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    kinds = {o["name"]: o["kind"] for o in done["outputs"]}
    assert kinds == {
        f"sample-{i}_slice.{ext}": kind
        for i in (0, 1)
        for ext, kind in (("nii.gz", "image"), ("json", "sidecar"), ("png", "preview"))
    }
    slices = [load(fetch(client, done, f"sample-{i}_slice.nii.gz")).get_fdata() for i in (0, 1)]
    assert slices[0].shape == (64, 64, 1) and slices[0].min() >= 0 and slices[0].max() <= 1
    assert not np.array_equal(slices[0], slices[1])  # seeds 4 and 5
    png = np.asarray(Image.open(io.BytesIO(fetch(client, done, "sample-0_slice.png"))))
    assert png.shape == (64, 64) and png.dtype == np.uint8
    np.testing.assert_allclose(png, np.rot90(np.round(slices[0][:, :, 0] * 255)), atol=1)
    side = json.loads(fetch(client, done, "sample-0_slice.json"))
    assert side["Synthetic"] is True and side["TumorClass"] == tumor_class and side["Truncation"] == 0.8
    assert side["Model"] == MODEL and side["Seed"] == 4
    preview = client.get(f"/v1/jobs/{done['id']}/preview.png", headers=ALPHA)
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "body,files,field",
    [
        ({"model": MODEL}, {}, "tumor_class"),
        ({"model": MODEL, "tumor_class": "HGG"}, {}, "tumor_class"),
        ({"model": MODEL, "tumor_class": "glioma", "truncation": 1.5}, {}, "truncation"),
        ({"model": MODEL, "tumor_class": "glioma", "num_samples": 65}, {}, "num_samples"),
        ({"model": MODEL, "tumor_class": "glioma", "sampler": {"name": "maskgit"}}, {}, "sampler.name"),
        ({"model": MODEL, "tumor_class": "glioma"}, {"mask": mask_bytes((20, 20, 20))}, "mask"),
        ({"model": "vqgan/tiny@1", "tumor_class": "LGG", "truncation": 0.5}, {}, "truncation"),
    ],
)
def test_stylegan2_requests_are_checked(client, body, files, field):
    r = submit(client, body, files)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field
