"""The shipped demo checkpoints through the API: what `make run` and a first user see."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.conftest import ALPHA
from tests.support.volumes import load
from tumorsynth.data.brats import find_subjects

from .helpers import submit, wait_status


def fetch(client, job, name) -> np.ndarray:
    r = client.get(f"/v1/jobs/{job['id']}/outputs/{name}", headers=ALPHA, follow_redirects=False)
    img = load(httpx.get(r.headers["location"]).content if r.status_code == 307 else r.content)
    return img


@pytest.mark.parametrize("tumor_class", ["LGG", "HGG"])
def test_vqgan_demo_makes_rois_of_either_class_and_seeds_differ(client, worker, tumor_class):
    jobs = [
        submit(client, {"model": "vqgan/demo-phantom@1", "tumor_class": tumor_class, "seed": s}).json() for s in (1, 2)
    ]
    done = [wait_status(client, j["id"], {"succeeded", "failed"}, timeout=180) for j in jobs]
    assert all(d["status"] == "succeeded" for d in done), [d["error"] for d in done]
    a, b = (fetch(client, d, "sample-0_flair.nii.gz").get_fdata() for d in done)
    assert a.shape == (32, 32, 32) and not np.allclose(a, b)
    assert a.std() > 0.05  # a tumour ROI, not a blank volume


def test_tavit_demo_returns_t1c_in_the_inputs_geometry(client, worker, tmp_path):
    from tumorsynth.data.phantoms import generate_phantoms

    generate_phantoms(tmp_path, 1, seed=4242, shape=(96, 96, 62))
    (subject,) = find_subjects(tmp_path)
    t1, flair = subject.paths["t1"].read_bytes(), subject.paths["flair"].read_bytes()
    r = submit(client, {"model": "tavit/demo-phantom@1"}, {"t1": t1, "flair": flair})
    assert r.status_code == 202, r.text
    job = wait_status(client, r.json()["id"], {"succeeded", "failed"}, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    out = fetch(client, job, "sample-0_t1c.nii.gz")
    src = load(t1)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
    assert np.isfinite(out.get_fdata()).all() and out.get_fdata().std() > 0.1
