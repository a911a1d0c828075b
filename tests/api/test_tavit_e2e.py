"""The TA-ViT family through the job API: T1 (+FLAIR) in, T1C out in the T1's geometry; inputs are checked."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.conftest import ALPHA
from tests.support.volumes import load, mask_array, nifti_bytes, oblique_affine

from .helpers import submit, wait_status

MODEL = "tavit/tiny@1"
SHAPE = (40, 44, 24)


def brain(shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (g**2).sum(0) < 0.8
    return (inside * (100 + 10 * rng.standard_normal(shape))).astype(np.float32)


def test_t1_and_flair_in_t1c_out_in_the_t1_geometry(client, worker):
    aff = oblique_affine()
    files = {
        "t1": nifti_bytes(brain(), aff),
        "flair": nifti_bytes(brain(seed=1), aff),
        "mask": nifti_bytes(mask_array(SHAPE).astype(np.uint8), aff),
    }
    r = submit(client, {"model": MODEL, "seed": 0}, files)
    assert r.status_code == 202, r.text
    job = wait_status(client, r.json()["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error"]
    (out,) = [o for o in job["outputs"] if o["kind"] == "image"]
    assert out["modality"] == "t1c"
    resp = client.get(f"/v1/jobs/{job['id']}/outputs/{out['name']}", headers=ALPHA, follow_redirects=False)
    img = load(httpx.get(resp.headers["location"]).content if resp.status_code == 307 else resp.content)
    assert img.shape == SHAPE and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.get_sform(), aff, atol=1e-5)
    assert np.isfinite(img.get_fdata()).all()


@pytest.mark.parametrize(
    "files,field",
    [
        ({"flair": nifti_bytes(brain(), oblique_affine())}, "t1"),
        ({"t1": nifti_bytes(brain(), oblique_affine())}, "flair"),
        (
            {"t1": nifti_bytes(brain(), oblique_affine()), "flair": nifti_bytes(brain((40, 44, 20)), oblique_affine())},
            "flair",
        ),
        (
            {"t1": nifti_bytes(brain(), oblique_affine()), "flair": nifti_bytes(brain(), np.diag([2.0, 2, 2, 1]))},
            "flair",
        ),
    ],
)
def test_missing_or_mismatched_inputs_are_422_naming_them(client, files, field):
    r = submit(client, {"model": MODEL}, files)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field, r.json()


def test_tavit_refuses_a_class_and_several_samples(client):
    files = {"t1": nifti_bytes(brain(), oblique_affine()), "flair": nifti_bytes(brain(), oblique_affine())}
    r = submit(client, {"model": MODEL, "tumor_class": "HGG"}, files)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "tumor_class"
    r = submit(client, {"model": MODEL, "num_samples": 3}, files)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "num_samples"
