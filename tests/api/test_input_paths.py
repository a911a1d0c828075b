"""Inputs that used to reach a 500, sent to a real API process: each is a 4xx problem+json naming what to change.

Forged cursors (``nan`` in any case and sign), non-finite JSON numbers, mask-bank classes no model declares or with
control characters, ids that reach another Redis key, webhook URLs with control characters, and a body framed
both by ``Transfer-Encoding: chunked`` and ``Content-Length`` (a request-smuggling shape).
"""

from __future__ import annotations

import base64
import json
import socket

import httpx
import pytest
import redis

from tests.conftest import ALPHA, make_settings
from tests.support.hammer import ApiProcess
from tests.support.services import settings_env
from tests.support.volumes import mask_bytes
from tumorsynth.embedded.redis_server import free_port
from tumorsynth.jobs import keys

from .bad_requests import BOUNDARY, MODEL, file, multipart, req

FORM = ALPHA | {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
JOB_ID = "job_0190000000000000000000000000abcd"  # the shape of a real id; no such job
BATCH_ID = "batch_0190000000000000000000000000abcd"


@pytest.fixture(scope="module")
def api(redis_server, s3_endpoint, model_dir, tmp_path_factory):
    from tumorsynth.storage import make_store

    s = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/13",
        family_queues=dict.fromkeys(("ldm", "vqgan", "tavit", "stylegan2"), "parked-inputs"),
    )
    store = make_store(s)
    store.ensure_bucket()
    r = redis.Redis.from_url(s.redis_url)
    r.flushdb()
    proc = ApiProcess(settings_env(s), free_port(), tmp_path_factory.mktemp("inputs") / "api.log").start()
    with httpx.Client(base_url=proc.base_url, timeout=60) as client:
        yield client, r, store, proc
    proc.stop()


def problem(resp: httpx.Response, status: int, field: str | None = None) -> dict:
    assert resp.status_code == status, f"{resp.status_code} {resp.text[:300]}"
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body


NAN_FORMS = ["nan", "NaN", "-nan", "+NAN", "nAn", "inf", "-Infinity", "+inf"]


@pytest.mark.parametrize("value", NAN_FORMS)
def test_non_finite_cursor_is_422_naming_the_cursor(api, value):
    client, *_ = api
    forged = base64.urlsafe_b64encode(f"{value}:{JOB_ID}".encode()).decode()
    for cursor in (value, forged):
        problem(client.get("/v1/jobs", params={"cursor": cursor}, headers=ALPHA), 422, "cursor")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_non_finite_json_numbers_are_refused_naming_the_field(api, literal):
    client, r, store, _ = api
    job = '{"model": "%s", "metadata": {"study": "x", "dose": %s}}' % (MODEL, literal)
    resp = client.post("/v1/jobs", content=multipart(req(job), file("mask", mask_bytes((24, 28, 20)))), headers=FORM)
    problem(resp, 422, "metadata.dose")
    nested = '{"model": "%s", "sampler": {"name": "dpm++", "steps": [%s]}}' % (MODEL, literal)
    problem(
        client.post("/v1/jobs", content=multipart(req(nested), file("mask", mask_bytes((24, 28, 20)))), headers=FORM),
        422,
        "sampler.steps.0",
    )
    batch = '{"model": "%s", "class_counts": {"LGG": 1, "HGG": 2}, "seed": %s}' % (MODEL, literal)
    problem(
        client.post("/v1/batches", content=batch, headers=ALPHA | {"Content-Type": "application/json"}), 422, "seed"
    )
    assert r.zcard(keys.tenant_jobs("alpha")) == 0 and store.list("tenants/alpha/") == []


@pytest.mark.parametrize("cls", ["\u202eGGL", "LGG\x00", "\x00", "LGG\n", "Martian", "lgg ", "\u200bLGG"])
def test_mask_bank_class_must_be_a_printable_class_a_model_declares(api, cls):
    client, _, store, _ = api
    body = multipart(req(json.dumps({"tumor_class": cls})), file("mask", mask_bytes((24, 28, 20))))
    problem(client.post("/v1/masks", content=body, headers=FORM), 422, "tumor_class")
    assert store.list("tenants/alpha/masks/") == []


def test_a_bank_grid_mask_with_a_bidi_and_nul_class_is_not_stored(api):
    """The attack as run: a mask the bank takes, under a class of RLO + NUL characters (it used to be stored)."""
    client, _, store, _ = api
    mask = mask_bytes((240, 240, 155))
    body = multipart(req(json.dumps({"tumor_class": "\u202e\x00"})), file("mask", mask))
    problem(client.post("/v1/masks", content=body, headers=FORM), 422, "tumor_class")
    assert store.list("tenants/alpha/masks/") == []
    body = multipart(req(json.dumps({"tumor_class": "LGG"})), file("mask", mask))
    assert client.post("/v1/masks", content=body, headers=FORM).status_code == 201
    assert len(store.list("tenants/alpha/masks/")) == 1
    for obj in store.list("tenants/alpha/masks/"):
        store.delete(obj.key)


# Every route that takes an id, with a suffix that reaches another Redis key of that id, and other shapes.
ID_ROUTES = [
    ("GET", "/v1/jobs/{job}"),
    ("POST", "/v1/jobs/{job}/cancel"),
    ("GET", "/v1/jobs/{job}/preview.png"),
    ("GET", "/v1/jobs/{job}/events"),
    ("GET", "/v1/jobs/{job}/outputs/x.nii.gz"),
    ("GET", "/v1/jobs/{job}/webhooks"),
    ("GET", "/v1/batches/{batch}"),
    ("POST", "/v1/batches/{batch}/cancel"),
    ("GET", "/v1/batches/{batch}/manifest.csv"),
]
BAD_IDS = [
    (f"{JOB_ID}:webhooks", f"{BATCH_ID}:counts"),
    ("job_x", "batch_x"),
    (JOB_ID.upper(), BATCH_ID.upper()),
    ("..", ".."),
    ("job_%2A", "batch_%2A"),
    (BATCH_ID, JOB_ID),
]


@pytest.mark.parametrize("method,route", ID_ROUTES, ids=[f"{m} {p}" for m, p in ID_ROUTES])
def test_ids_not_shaped_as_ids_are_404(api, method, route):
    client, r, *_ = api
    r.rpush(keys.job_webhooks(JOB_ID), "whd_x")  # other keys that an id with a suffix used to reach
    r.hset(keys.batch_counts(BATCH_ID), "succeeded", 1)
    for job, batch in BAD_IDS:
        problem(client.request(method, route.format(job=job, batch=batch), headers=ALPHA), 404)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/\r\nX-Injected: 1",
        "http://example.com/a b",
        "http://exa\tmple.com/",
        "http://example.com/\x00",
        "http://example.com/\x7f",
        "http://example.com/\u202e",
        " http://example.com/",
        "http://example.com/\u00a0",
    ],
)
def test_webhook_url_with_control_characters_or_whitespace_is_refused(api, url):
    client, r, *_ = api
    body = multipart(req(json.dumps({"model": MODEL, "webhook": url})), file("mask", mask_bytes((24, 28, 20))))
    problem(client.post("/v1/jobs", content=body, headers=FORM), 422, "webhook")
    assert r.zcard(keys.tenant_jobs("alpha")) == 0


def raw_request(proc: ApiProcess, head: str, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_chunked_body_with_content_length_is_400(api):
    client, r, _, proc = api
    payload = multipart(req({"model": MODEL}), file("mask", mask_bytes((24, 28, 20))))
    chunked = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {ALPHA['Authorization']}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n"
    )
    answer = raw_request(proc, head, chunked)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"application/problem+json" in answer and b"Content-Length" in answer
    assert r.zcard(keys.tenant_jobs("alpha")) == 0
    # the same body framed one way only is taken
    ok = head.replace(f"Content-Length: {len(payload)}\r\n", "")
    assert raw_request(proc, ok, chunked).startswith(b"HTTP/1.1 202")
    r.flushdb()
