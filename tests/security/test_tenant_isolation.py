"""Tenant beta reaches none of tenant alpha's jobs, outputs, batches or masks: each id answers 404, as a missing one.

Against the session's real services: Redis, the S3 endpoint (moto server) and a worker process.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import ALPHA, BETA
from tests.support.services import wait_for
from tests.support.volumes import mask_bytes
from tumorsynth.storage.keys import tenant_prefix


def job_routes(job: dict) -> list[tuple[str, str]]:
    jid = job["id"]
    routes = [
        ("GET", f"/v1/jobs/{jid}"),
        ("POST", f"/v1/jobs/{jid}/cancel"),
        ("GET", f"/v1/jobs/{jid}/events"),
        ("GET", f"/v1/jobs/{jid}/preview.png"),
        ("GET", f"/v1/jobs/{jid}/webhooks"),
    ]
    return routes + [("GET", f"/v1/jobs/{jid}/outputs/{o['name']}") for o in job["outputs"]]


def assert_not_found(r, what: str) -> None:
    assert r.status_code == 404, f"{what}: {r.status_code} {r.text[:200]}"
    assert r.headers["content-type"] == "application/problem+json", what


def test_every_job_route_answers_404_to_another_tenant(sec_client, alpha_job):
    job, _ = alpha_job
    assert len(job["outputs"]) >= 5
    for method, path in job_routes(job):
        assert_not_found(sec_client.request(method, path, headers=BETA), f"beta {method} {path}")
        # and a 404 the same as for an id that does not exist: nothing tells beta the job is there
        missing = path.replace(job["id"], "job_" + "0" * 32)
        assert sec_client.request(method, missing, headers=BETA).json()["title"] == "Not found"
    assert sec_client.get(f"/v1/jobs/{job['id']}", headers=ALPHA).json()["status"] == "succeeded"


def test_another_tenant_cannot_list_the_jobs(sec_client, alpha_job):
    job, _ = alpha_job
    for params in ({}, {"status": "succeeded"}, {"model": job["model"]}, {"limit": 200}):
        listed = sec_client.get("/v1/jobs", params=params, headers=BETA).json()["jobs"]
        assert job["id"] not in {j["id"] for j in listed}
    assert job["id"] in {j["id"] for j in sec_client.get("/v1/jobs?limit=200", headers=ALPHA).json()["jobs"]}


def test_outputs_are_fetched_by_their_tenant_only(sec_client, alpha_job):
    job, _ = alpha_job
    name = job["outputs"][0]["name"]
    r = sec_client.get(f"/v1/jobs/{job['id']}/outputs/{name}", headers=ALPHA, follow_redirects=False)
    assert r.status_code == 307  # S3: a presigned link, handed to alpha only
    assert httpx.get(r.headers["location"]).status_code == 200
    beta = sec_client.get(f"/v1/jobs/{job['id']}/outputs/{name}", headers=BETA, follow_redirects=False)
    assert_not_found(beta, "beta output")
    assert "location" not in beta.headers and "X-Amz-Signature" not in beta.text
    for j in sec_client.get("/v1/jobs?limit=200", headers=BETA).json()["jobs"]:
        assert all(f"/{job['id']}/" not in (o["url"] or "") for o in j["outputs"])


def test_object_keys_hold_the_tenant(alpha_job, app):
    job, _ = alpha_job
    store = app.state.services.store
    keys = [o.key for o in store.list(f"{tenant_prefix('alpha')}jobs/{job['id']}/")]
    assert keys and all(k.startswith(f"tenants/alpha/jobs/{job['id']}/") for k in keys)
    assert not [o for o in store.list(tenant_prefix("beta")) if job["id"] in o.key]


@pytest.fixture(scope="module")
def alpha_batch(sec_client, worker):
    body = {
        "model": "ldm/tiny@1",
        "class_counts": {"LGG": 1, "HGG": 2},
        "target": "balance",
        "masks": "upload",
        "modalities": ["flair"],
        "sampler": {"name": "dpm++", "steps": 5},
    }
    files = {
        "request": (None, json.dumps(body), "application/json"),
        "mask": ("m.nii.gz", mask_bytes((40, 44, 30)), "application/octet-stream"),
    }
    r = sec_client.post("/v1/batches", files=files, headers=ALPHA)
    assert r.status_code == 202, r.text
    bid = r.json()["id"]
    wait_for(
        lambda: sec_client.get(f"/v1/batches/{bid}", headers=ALPHA).json()["status"] in {"succeeded", "failed"},
        timeout=180,
        what="batch done",
    )
    return sec_client.get(f"/v1/batches/{bid}", headers=ALPHA).json()


def test_batches_answer_404_to_another_tenant(sec_client, alpha_batch):
    bid = alpha_batch["id"]
    assert alpha_batch["status"] == "succeeded"
    assert sec_client.get(f"/v1/batches/{bid}/manifest.csv", headers=ALPHA).status_code == 200
    for method, path in [
        ("GET", f"/v1/batches/{bid}"),
        ("POST", f"/v1/batches/{bid}/cancel"),
        ("GET", f"/v1/batches/{bid}/manifest.csv"),
        ("GET", f"/v1/batches/{bid}/manifest.json"),
    ]:
        assert_not_found(sec_client.request(method, path, headers=BETA), f"beta {method} {path}")
    assert sec_client.get(f"/v1/batches/{bid}", headers=ALPHA).json()["status"] == "succeeded"
    # the batch's jobs are alpha's too
    assert all(j.get("batch_id") != bid for j in sec_client.get("/v1/jobs?limit=200", headers=BETA).json()["jobs"])
    assert any(j.get("batch_id") == bid for j in sec_client.get("/v1/jobs?limit=200", headers=ALPHA).json()["jobs"])


def test_the_mask_bank_is_per_tenant(sec_client, app):
    from tumorsynth.jobs.maskbank import BANK_SHAPE

    bank = app.state.services.bank
    r = sec_client.post(
        "/v1/masks",
        files={
            "request": (None, '{"tumor_class": "HGG"}', "application/json"),
            "mask": ("m.nii.gz", mask_bytes(BANK_SHAPE), "application/octet-stream"),
        },
        headers=ALPHA,
    )
    assert r.status_code == 201, r.text
    assert len(bank.sources("alpha", "HGG")) >= 1
    assert bank.sources("beta", "HGG") == []
    keys = [o.key for o in app.state.services.store.list("tenants/")]
    assert any(k.startswith(f"tenants/alpha/masks/{r.json()['id']}/") for k in keys)
    assert not any(r.json()["id"] in k for k in keys if not k.startswith("tenants/alpha/"))
