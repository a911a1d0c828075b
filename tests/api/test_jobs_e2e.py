"""End to end: the API in-process, a real Redis, a real S3 endpoint (moto server), a real Celery worker process."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.conftest import ALPHA, BETA
from tests.support.volumes import load, mask_bytes, oblique_affine

from .helpers import submit, wait_status

MODEL = "ldm/tiny@1"
SHAPE = (64, 72, 40)


def fetch(client, job_id: str, name: str, headers=ALPHA) -> bytes:
    r = client.get(f"/v1/jobs/{job_id}/outputs/{name}", headers=headers, follow_redirects=False)
    if r.status_code == 307:  # a presigned S3 URL: fetched without our bearer key
        return httpx.get(r.headers["location"]).raise_for_status().content
    assert r.status_code == 200, r.text
    return r.content


def test_models_are_listed(client):
    r = client.get("/v1/models", headers=ALPHA)
    assert r.status_code == 200
    (m,) = [m for m in r.json()["models"] if m["id"] == MODEL]
    assert m["task"] == "mask_to_volume" and m["modalities"] == ["t1", "t1c", "t2", "flair"]
    assert {s["name"] for s in m["samplers"]} == {"ddpm", "ddim", "dpm++"}
    assert len(m["checkpoint"]["sha256"]) == 64 and m["trained"] is False


@pytest.mark.parametrize("convention", ["brats2019", "brats2023", "binary"])
def test_mask_in_four_contrasts_out_in_the_masks_geometry(client, worker, convention):
    affine = oblique_affine()
    r = submit(
        client,
        {"model": MODEL, "num_samples": 2, "seed": 11, "sampler": {"name": "ddim", "steps": 30}},
        {"mask": mask_bytes(SHAPE, convention, affine)},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["inputs"][0]["label_convention"] == convention
    job = wait_status(client, job["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["progress"]["fraction"] == 1.0
    images = [o for o in job["outputs"] if o["kind"] == "image"]
    assert sorted((o["sample_index"], o["modality"]) for o in images) == sorted(
        (i, m) for i in (0, 1) for m in ("t1", "t1c", "t2", "flair")
    )
    for out in images:
        img = load(fetch(client, job["id"], out["name"]))
        assert img.shape == SHAPE and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.get_sform(), affine, atol=1e-5)
        np.testing.assert_allclose(img.get_qform(), affine, atol=1e-4)
        assert img.header["descrip"].tobytes().strip(b"\x00") == b""
        assert np.isfinite(img.get_fdata()).all() and img.get_fdata().std() > 0
        side = json.loads(fetch(client, job["id"], out["name"].replace(".nii.gz", ".json")))
        assert side["Synthetic"] is True and side["Model"] == MODEL and side["Seed"] == 11
        assert side["Sampler"] == "ddim" and side["Steps"] == 30 and side["JobId"] == job["id"]
    (mask_out,) = [o for o in job["outputs"] if o["kind"] == "mask"]
    labels = np.unique(load(fetch(client, job["id"], mask_out["name"])).get_fdata())
    assert set(labels) <= {0, 1, 2, 3}


def test_seeded_jobs_reproduce(client, worker):
    mask = mask_bytes(SHAPE, "brats2023")
    req = {"model": MODEL, "seed": 5, "modalities": ["flair"], "sampler": {"name": "dpm++", "steps": 10}}
    ids = [submit(client, req, {"mask": mask}).json()["id"] for _ in range(2)]
    jobs = [wait_status(client, i, {"succeeded"}) for i in ids]
    sha = [[o["sha256"] for o in j["outputs"] if o["kind"] == "image"] for j in jobs]
    assert sha[0] == sha[1] and len(sha[0]) == 1


def test_cancel_running_job_stops_and_worker_takes_the_next(client, worker):
    mask = mask_bytes(SHAPE, "brats2023")
    job = submit(client, {"model": MODEL, "sampler": {"name": "ddpm", "steps": 1000}}, {"mask": mask}).json()
    wait_status(client, job["id"], {"running"}, pred=lambda j: j["progress"]["completed_steps"] > 5)
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=ALPHA)
    assert r.status_code == 202 and r.json()["status"] in {"canceling", "canceled"}
    done = wait_status(client, job["id"], {"canceled", "succeeded", "failed"}, timeout=30)
    assert done["status"] == "canceled" and done["outputs"] == []
    assert done["progress"]["completed_steps"] < done["progress"]["total_steps"]
    nxt = submit(client, {"model": MODEL, "sampler": {"name": "dpm++", "steps": 5}}, {"mask": mask}).json()
    assert wait_status(client, nxt["id"], {"succeeded", "failed"})["status"] == "succeeded"


def test_tenants_see_only_their_own_jobs(client, worker):
    job = submit(client, {"model": MODEL, "sampler": {"name": "dpm++", "steps": 5}}, {"mask": mask_bytes(SHAPE)}).json()
    job = wait_status(client, job["id"], {"succeeded"})
    name = job["outputs"][0]["name"]
    for method, path in [
        ("get", f"/v1/jobs/{job['id']}"),
        ("post", f"/v1/jobs/{job['id']}/cancel"),
        ("get", f"/v1/jobs/{job['id']}/outputs/{name}"),
    ]:
        r = client.request(method, path, headers=BETA)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert job["id"] not in {j["id"] for j in client.get("/v1/jobs", headers=BETA).json()["jobs"]}
    assert job["id"] in {j["id"] for j in client.get("/v1/jobs?limit=200", headers=ALPHA).json()["jobs"]}


def test_requests_without_a_valid_key_are_refused(client):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic a2V5LWFscGhh"}):
        r = client.get("/v1/jobs", headers=headers)
        assert r.status_code == 401 and r.json()["status"] == 401 and "Bearer" in r.json()["detail"]
