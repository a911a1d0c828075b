"""Download links expire, and the API never hands out one that has.

The test S3 server (moto) serves expired presigned URLs, so S3 links are checked by what they say (SigV4's
X-Amz-Date and X-Amz-Expires, against the job's ``expires_at`` and the setting), and expiry is enforced where the
service does it itself: the local store's HMAC links, verified by ``GET /v1/objects/...``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from tests.conftest import ALPHA, make_settings
from tumorsynth.settings import Settings
from tumorsynth.storage.keys import output_key
from tumorsynth.storage.signing import sign


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def s3_window(url: str) -> tuple[float, int]:
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    signed = datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    return signed, int(q["X-Amz-Expires"])


def test_s3_links_carry_the_configured_expiry_and_are_signed_at_read_time(sec_client, alpha_job, settings):
    job, _ = alpha_job
    first = sec_client.get(f"/v1/jobs/{job['id']}", headers=ALPHA).json()
    time.sleep(1.1)
    second = sec_client.get(f"/v1/jobs/{job['id']}", headers=ALPHA).json()
    for a, b in zip(first["outputs"], second["outputs"]):
        for out in (a, b):
            signed, lifetime = s3_window(out["url"])
            assert lifetime == settings.presign_expiry_seconds
            assert abs(signed - time.time()) < 120, "signed long ago: a stored link, not a fresh one"
            assert abs(epoch(out["expires_at"]) - (signed + lifetime)) <= 2
            assert epoch(out["expires_at"]) > time.time()
        assert s3_window(b["url"])[0] >= s3_window(a["url"])[0] and b["url"] != a["url"]


@pytest.mark.parametrize("seconds", [0, 59, 7 * 24 * 3600 + 1])
def test_link_lifetime_is_bounded(seconds):
    with pytest.raises(ValidationError):
        Settings(presign_expiry_seconds=seconds)


@pytest.fixture(scope="module")
def local(redis_server, model_dir, tmp_path_factory):
    """The API over a local-folder store, whose links the API itself signs and verifies."""
    from tumorsynth.api.app import create_app

    s = make_settings(
        redis_server,
        None,
        model_dir,
        storage_dir=tmp_path_factory.mktemp("objs"),
        url_signing_key="local-signing-key-0123456789",
        presign_expiry_seconds=120,
    )
    app = create_app(s)
    store = app.state.services.store
    key = output_key("alpha", "job_local1", "sample-0_t1.nii.gz")
    store.put_bytes(key, b"synthetic volume bytes", "application/gzip")
    store.put_bytes(output_key("alpha", "job_local1", "sample-0_t2.nii.gz"), b"other", "application/gzip")
    with TestClient(app) as c:
        yield c, s, store, key


def link(key: str, expires: int, signature: str) -> str:
    return f"/v1/objects/{key}?expires={expires}&signature={signature}"


def test_a_fresh_local_link_fetches_its_object_without_a_key(local):
    client, s, store, key = local
    url = store.presigned_get_url(key, s.presign_expiry_seconds)
    r = client.get(url.removeprefix(s.public_url))
    assert r.status_code == 200 and r.content == b"synthetic volume bytes"


def test_an_expired_local_link_is_refused(local):
    client, s, store, key = local
    past = int(time.time()) - 1
    r = client.get(link(key, past, sign(key, past, s.url_signing_key.encode())))
    assert r.status_code == 401 and r.json()["code"] == "url_expired"
    assert r.headers["content-type"] == "application/problem+json" and b"synthetic" not in r.content


@pytest.mark.parametrize("tamper", ["expiry", "key", "signature", "other tenant"])
def test_a_tampered_local_link_is_refused(local, tamper):
    client, s, store, key = local
    expires = int(time.time()) + 60
    sig = sign(key, expires, s.url_signing_key.encode())
    url = {
        "expiry": link(key, expires + 3600, sig),
        "key": link(key.replace("t1", "t2"), expires, sig),
        "signature": link(key, expires, sig[:-1] + ("0" if sig[-1] != "0" else "1")),
        "other tenant": link(key.replace("tenants/alpha/", "tenants/beta/"), expires, sig),
    }[tamper]
    r = client.get(url)
    assert r.status_code == 401 and r.json()["code"] == "bad_signature", r.text


def test_the_api_hands_out_local_links_that_are_current(local):
    from tumorsynth.api.render import output_url

    client, s, store, key = local
    url, expires_at = output_url(store, s, SimpleNamespace(id="job_local1"), "sample-0_t1.nii.gz", key)
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    assert time.time() < expires <= time.time() + s.presign_expiry_seconds + 1
    assert abs(epoch(expires_at) - expires) <= 1
    assert client.get(url.removeprefix(s.public_url)).status_code == 200


def test_s3_stores_sign_no_local_links(sec_client, settings):
    """The S3 deployment has no signing key: a link forged for the local route is refused, not served."""
    key = output_key("alpha", "job_x", "sample-0_t1.nii.gz")
    r = sec_client.get(link(key, int(time.time()) + 60, sign(key, int(time.time()) + 60, b"guess")))
    assert r.status_code == 401 and r.json()["code"] == "bad_signature"
