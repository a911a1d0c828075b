"""Uploads expire by lifecycle rule, and object keys are the service's own, never a client's file name.

Tags are read back from the real S3 endpoint (moto server) after the service wrote the objects; the rules that
act on them are the bucket-init script's (``docker/minio-init.sh``), checked against the tags the code writes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ALPHA, make_settings
from tests.support.volumes import mask_bytes
from tumorsynth.storage.keys import batch_key, input_key, job_prefix, mask_bank_key, object_kind, output_key

ROOT = Path(__file__).resolve().parents[2]


def tags(store, key: str) -> dict[str, str]:
    return dict(store.client.get_object_tags(store.bucket, key) or {})


def test_uploaded_inputs_and_outputs_are_tagged_on_the_s3_endpoint(alpha_job, app):
    job, _ = alpha_job
    store = app.state.services.store
    objects = store.list(job_prefix("alpha", job["id"]))
    inputs = [o.key for o in objects if "/inputs/" in o.key]
    outputs = [o.key for o in objects if "/outputs/" in o.key]
    assert inputs and outputs
    assert all(tags(store, k) == {"kind": "input"} for k in inputs)
    assert all(tags(store, k) == {"kind": "output"} for k in outputs)


@pytest.mark.parametrize(
    "key,kind",
    [
        (input_key("alpha", "job_t", "mask.nii.gz"), "input"),
        (output_key("alpha", "job_t", "x.json"), "output"),
        (mask_bank_key("alpha", "mask_t", "mask.nii.gz"), "mask"),
        (batch_key("alpha", "batch_t", "manifest.csv"), "manifest"),
    ],
)
def test_every_kind_of_key_is_tagged_when_written(app, key, kind):
    store = app.state.services.store
    store.put_bytes(key, b"x")
    assert object_kind(key) == kind and tags(store, key) == {"kind": kind}


def test_the_bucket_init_script_expires_uploads_sooner_than_outputs():
    script = (ROOT / "docker" / "minio-init.sh").read_text()
    rules = re.findall(r'mc ilm rule add --tags "kind=(\w+)" --expire-days "\$\{(\w+):-(\d+)\}"', script)
    days = {kind: (var, int(default)) for kind, var, default in rules}
    assert set(days) == {"input", "output"}, "a rule per kind the service writes for jobs"
    assert days["input"] == ("INPUT_RETENTION_DAYS", 7) and days["output"][0] == "OUTPUT_RETENTION_DAYS"
    assert days["input"][1] < days["output"][1]
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "INPUT_RETENTION_DAYS: ${INPUT_RETENTION_DAYS:-7}" in compose and "minio-init.sh" in compose


# Client file names that must not shape a key: traversal, absolute paths, Windows separators, NUL, unicode dots,
# percent-encoding, another tenant's prefix.
EVIL_NAMES = [
    "../../x.nii.gz",
    "/etc/passwd",
    "..\\..\\win.ini",
    "a\x00b.nii.gz",
    "\u2025/\u2025/x.nii.gz",
    "\uff0e\uff0e\uff0fx.nii.gz",
    "%2e%2e%2f%2e%2e%2fx",
    "tenants/beta/jobs/job_x/inputs/mask.nii.gz",
    "mask.nii.gz/../../../../beta",
    "~/.ssh/id_rsa",
    "x" * 300,
]


@pytest.fixture(scope="module")
def keyed(redis_server, s3_endpoint, model_dir):
    """The API with a bucket of its own (so every object in it is from these tests) and no worker on its queue."""
    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    s = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/13",
        family_queues={"ldm": "parked"},
    )
    make_store(s).ensure_bucket()
    app = create_app(s)
    with TestClient(app) as c:
        yield c, app.state.services.store


@pytest.mark.parametrize("name", EVIL_NAMES, ids=[repr(n)[:40] for n in EVIL_NAMES])
def test_a_job_input_key_ignores_the_client_file_name(keyed, name):
    client, store = keyed
    before = {o.key for o in store.list("")}
    r = client.post(
        "/v1/jobs",
        headers=ALPHA,
        files={
            "request": (None, '{"model": "ldm/tiny@1"}', "application/json"),
            "mask": (name, mask_bytes((24, 28, 20)), "application/octet-stream"),
        },
    )
    assert r.status_code == 202, r.text
    new = {o.key for o in store.list("")} - before
    assert new == {f"tenants/alpha/jobs/{r.json()['id']}/inputs/mask.nii.gz"}
    assert name not in r.text


@pytest.mark.parametrize("part", ["../mask", "mask/../../x", "/mask", "mask\x00", "MASK"])
def test_part_names_are_checked_against_the_models_inputs(keyed, part):
    client, store = keyed
    before = {o.key for o in store.list("")}
    r = client.post(
        "/v1/jobs",
        headers=ALPHA,
        files={
            "request": (None, '{"model": "ldm/tiny@1"}', "application/json"),
            "mask": ("m.nii.gz", mask_bytes((24, 28, 20)), "application/octet-stream"),
            part: ("m.nii.gz", mask_bytes((24, 28, 20)), "application/octet-stream"),
        },
    )
    assert 400 <= r.status_code < 500 and r.headers["content-type"] == "application/problem+json"
    assert {o.key for o in store.list("")} == before


def test_a_bank_mask_key_ignores_the_client_file_name(keyed):
    from tumorsynth.jobs.maskbank import BANK_SHAPE

    client, store = keyed
    before = {o.key for o in store.list("")}
    r = client.post(
        "/v1/masks",
        headers=ALPHA,
        files={
            "request": (None, '{"tumor_class": "LGG"}', "application/json"),
            "mask": ("../../../tenants/beta/masks/evil.nii.gz", mask_bytes(BANK_SHAPE), "application/octet-stream"),
        },
    )
    assert r.status_code == 201, r.text
    assert {o.key for o in store.list("")} - before == {f"tenants/alpha/masks/{r.json()['id']}/mask.nii.gz"}
