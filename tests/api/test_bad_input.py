"""Every malformed file and request is refused with a 4xx problem+json, and leaves no trace.

"No trace" is checked on the real services, not on counters: the app has a Redis database and an S3 bucket of its
own, and after each refusal every key of that database (dumped byte for byte) and every object of that bucket is
as it was. A valid submission at the end shows that the same check does see a stored, queued job.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ALPHA, make_settings
from tests.imaging.malformed import corpus as file_corpus
from tests.support.services import queue_depth
from tumorsynth.jobs import keys as redis_keys

from .bad_requests import BOUNDARY, MODEL, file, multipart, req
from .bad_requests import corpus as request_corpus

REQUESTS = request_corpus()
FILES = file_corpus()
FORM = ALPHA | {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
PARKED = {"ldm": "parked", "vqgan": "parked", "tavit": "parked", "stylegan2": "parked"}


@pytest.fixture(scope="module")
def guarded(redis_server, s3_endpoint, model_dir):
    """The API on Redis database 9 and a bucket of its own; no worker consumes its queue."""
    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    s = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/9",
        family_queues=PARKED,
        max_request_bytes=8 * 1024**2,
        max_file_bytes=4 * 1024**2,
        max_decompressed_bytes=32 * 1024**2,
    )
    make_store(s).ensure_bucket()
    app = create_app(s)
    app.state.services.redis.flushdb()
    with TestClient(app) as c:
        yield c, app.state.services


def snapshot(services) -> tuple[dict, list]:
    r = services.redis
    keys = {k: r.dump(k) for k in r.scan_iter(count=1000)}
    objects = [(o.key, o.size) for o in services.store.list("")]
    return keys, objects


def assert_problem(r, status: int, field: str | None, name: str) -> dict:
    assert r.status_code == status, f"{name}: {r.status_code} {r.text[:400]}"
    assert r.headers["content-type"] == "application/problem+json", name
    body = r.json()
    assert body["status"] == status and body["title"] and len(body["detail"]) > 10, name
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], f"{name}: {body}"
    return body


def test_the_corpora_are_large_enough():
    names = [c.name for c in REQUESTS] + [c[0] for c in FILES]
    assert len(REQUESTS) >= 50 and len(FILES) >= 50 and len(set(names)) == len(names)


@pytest.mark.parametrize("case", REQUESTS, ids=[c.name for c in REQUESTS])
def test_malformed_request_is_refused_and_leaves_no_trace(guarded, case):
    client, services = guarded
    before = snapshot(services)
    r = client.request(case.method, case.path, content=case.body or None, headers=case.request_headers(ALPHA))
    assert_problem(r, case.status, case.field, case.name)
    assert snapshot(services) == before, case.name


@pytest.mark.parametrize("name,data,status", FILES, ids=[c[0] for c in FILES])
def test_malformed_file_is_refused_through_the_api_and_leaves_no_trace(guarded, name, data, status):
    client, services = guarded
    before = snapshot(services)
    r = client.post("/v1/jobs", content=multipart(req({"model": MODEL}), file("mask", data)), headers=FORM)
    assert_problem(r, status, "mask" if status == 422 else None, name)
    assert snapshot(services) == before, name


def test_a_valid_submission_is_seen_by_the_same_check(guarded):
    from tests.support.volumes import mask_bytes

    client, services = guarded
    before = snapshot(services)
    queued = queue_depth(services.redis, "parked")
    r = client.post(
        "/v1/jobs", content=multipart(req({"model": MODEL}), file("mask", mask_bytes((24, 28, 20)))), headers=FORM
    )
    assert r.status_code == 202, r.text
    keys, objects = snapshot(services)
    new_objects = set(objects) - set(before[1])
    assert [k for k, _ in new_objects] == [f"tenants/alpha/jobs/{r.json()['id']}/inputs/mask.nii.gz"]
    assert redis_keys.job(r.json()["id"]).encode() in keys and queue_depth(services.redis, "parked") == queued + 1
