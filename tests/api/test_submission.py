"""Submission rules against real Redis and S3, on a queue no worker consumes (jobs stay queued)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ALPHA, make_settings
from tests.support.services import queue_depth
from tests.support.volumes import mask_bytes
from tumorsynth.jobs import keys

from .helpers import submit

MODEL = "ldm/tiny@1"


@pytest.fixture(scope="module")
def parked(redis_server, s3_endpoint, model_dir):
    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    s = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        family_queues={"ldm": "parked"},
        max_request_bytes=8 * 1024**2,
        max_file_bytes=4 * 1024**2,
        max_decompressed_bytes=32 * 1024**2,
    )
    make_store(s).ensure_bucket()
    app = create_app(s)
    with TestClient(app) as c:
        yield c, app.state.services


def counts(services, tenant="alpha"):
    return (
        services.redis.zcard(keys.tenant_jobs(tenant)),
        len(services.store.list(f"tenants/{tenant}/")),
        queue_depth(services.redis, "parked"),
    )


def test_cancel_of_a_queued_job_is_immediate(parked):
    client, _ = parked
    job = submit(client, {"model": MODEL}, {"mask": mask_bytes()}).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=ALPHA)
    assert r.status_code == 202 and r.json()["status"] == "canceled" and r.json()["completed_at"]


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(parked):
    client, services = parked
    mask = mask_bytes()
    first = submit(client, {"model": MODEL, "seed": 3}, {"mask": mask}, extra_headers={"Idempotency-Key": "k-1"})
    before = counts(services)
    again = submit(client, {"model": MODEL, "seed": 3}, {"mask": mask}, extra_headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert counts(services) == before
    other = submit(client, {"model": MODEL, "seed": 4}, {"mask": mask}, extra_headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert counts(services) == before


def test_list_is_newest_first_and_cursor_paginated(parked):
    client, _ = parked
    ids = [submit(client, {"model": MODEL}, {"mask": mask_bytes()}).json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = client.get(
            "/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=ALPHA
        ).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in ids] == ids[::-1]
    queued = client.get("/v1/jobs", params={"status": "queued", "limit": 200}, headers=ALPHA).json()["jobs"]
    assert {j["status"] for j in queued} == {"queued"} and set(ids) <= {j["id"] for j in queued}
    assert client.get("/v1/jobs", params={"cursor": "%%%"}, headers=ALPHA).status_code == 422


@pytest.mark.parametrize(
    "request_body, files, field",
    [
        ({"model": "ldm/none@1"}, "mask", "model"),
        ({"model": "not a model"}, "mask", "model"),
        ({"model": MODEL, "tumor_class": "XYZ"}, "mask", "tumor_class"),
        ({"model": MODEL, "modalities": ["pet"]}, "mask", "modalities"),
        ({"model": MODEL, "sampler": {"name": "euler"}}, "mask", "sampler.name"),
        ({"model": MODEL, "sampler": {"name": "dpm++", "steps": 900}}, "mask", "sampler.steps"),
        ({"model": MODEL, "num_samples": 65}, "mask", "num_samples"),
        ({"model": MODEL, "num_samples": "two"}, "mask", "num_samples"),
        ({"model": MODEL, "colour": "red"}, "mask", "colour"),
        ({"model": MODEL, "webhook": "ftp://x"}, "mask", "webhook"),
        ({"model": MODEL}, None, "mask"),
        ({"model": MODEL}, "t1", "t1"),
    ],
)
def test_bad_requests_are_422_naming_the_field_and_keep_nothing(parked, request_body, files, field):
    client, services = parked
    before = counts(services)
    r = submit(client, request_body, {files: mask_bytes()} if files else None)
    assert r.status_code == 422, r.text
    body = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert body["status"] == 422 and field in [e["field"] for e in body["errors"]]
    assert counts(services) == before


def test_request_part_must_be_json(parked):
    client, _ = parked
    r = client.post("/v1/jobs", files={"request": (None, "{not json"), "mask": ("m", mask_bytes())}, headers=ALPHA)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "request"
    r = client.post("/v1/jobs", json={"model": MODEL}, headers=ALPHA)
    assert r.status_code == 422


def test_oversized_body_is_413_and_keeps_nothing(parked):
    client, services = parked
    before = counts(services)
    r = submit(client, {"model": MODEL}, {"mask": b"\x00" * (9 * 1024**2)})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    r = submit(client, {"model": MODEL}, {"mask": b"\x00" * (5 * 1024**2)})
    assert r.status_code == 413
    assert counts(services) == before


def test_malformed_corpus_is_refused_and_nothing_is_stored_or_queued(parked):
    from tests.imaging.malformed import api_corpus

    client, services = parked
    before = counts(services)
    cases = api_corpus()
    assert len(cases) >= 30
    for name, data, status in cases:
        r = submit(client, {"model": MODEL}, {"mask": data})
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        body = r.json()
        assert body["status"] == status and body["detail"], name
        if status == 422:
            assert body["errors"][0]["field"] == "mask", name
    assert counts(services) == before


def test_openapi_documents_the_job_form(parked):
    client, _ = parked
    spec = client.get("/openapi.json").json()
    form = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "request" in form["schema"]["properties"]
    assert json.loads(json.dumps(spec))["info"]["title"] == "tumorsynth"
