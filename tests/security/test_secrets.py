"""API keys are compared in constant time, never logged, never echoed; the service will not start with weak ones.

"Constant time" is checked by behaviour: every lookup runs ``hmac.compare_digest`` once against every configured
key, whether the offered key is right, wrong, a prefix or empty, so neither the result nor which key matched
changes how many comparisons run.
"""

from __future__ import annotations

import hmac
import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ALPHA, make_settings
from tests.support.hammer import ApiProcess
from tests.support.services import settings_env
from tumorsynth.embedded.redis_server import free_port
from tumorsynth.settings import Settings

from .conftest import LogCapture

KEYS = "alpha:alpha-key-7f3a9c1e5b2d,beta:beta-key-0c8e4a6f2d9b,gamma:gamma-key-5e1b7d3f9a0c"
WRONG = "wrong-key-93b1f0e7c5a2"


@pytest.fixture()
def compare_calls(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    return calls


@pytest.mark.parametrize(
    "offered,tenant",
    [
        ("alpha-key-7f3a9c1e5b2d", "alpha"),
        ("gamma-key-5e1b7d3f9a0c", "gamma"),
        (WRONG, None),
        ("alpha-key", None),
        ("", None),
        ("alpha-key-7f3a9c1e5b2dX", None),
    ],
)
def test_every_key_is_compared_with_compare_digest_whatever_is_offered(compare_calls, offered, tenant):
    s = Settings(api_keys=KEYS)
    assert s.tenant_for_key(offered) == tenant
    assert len(compare_calls) == 3 and {a for a, _ in compare_calls} == {k.encode() for k in s.tenants_by_key}


def test_the_api_authenticates_through_compare_digest(compare_calls, sec_client):
    assert sec_client.get("/v1/models", headers=ALPHA).status_code == 200
    assert len(compare_calls) >= 2  # both configured keys, for the one request
    compare_calls.clear()
    assert sec_client.get("/v1/models", headers={"Authorization": f"Bearer {WRONG}"}).status_code == 401
    assert len(compare_calls) >= 2


def test_signed_links_are_checked_with_compare_digest(compare_calls):
    from tumorsynth.storage.signing import sign, verify

    verify("k", 2**40, sign("k", 2**40, b"s" * 32), b"s" * 32)
    assert len(compare_calls) == 1


def test_keys_are_not_logged_or_echoed_in_process(sec_client):
    with LogCapture() as logs:
        ok = sec_client.get("/v1/jobs", headers=ALPHA)
        bad = sec_client.get("/v1/jobs", headers={"Authorization": f"Bearer {WRONG}"})
        odd = sec_client.get("/v1/jobs", headers={"Authorization": f"Basic {WRONG}"})
    assert ok.status_code == 200 and bad.status_code == odd.status_code == 401
    assert logs.lines, "nothing was captured: the check would be empty"
    for secret in ("key-alpha", WRONG):
        assert secret not in logs.text
        assert secret not in bad.text + odd.text + str(bad.headers) + str(odd.headers)


def test_keys_are_not_logged_by_a_real_api_process(redis_server, s3_endpoint, model_dir, tmp_path, worker):
    s = make_settings(
        redis_server, s3_endpoint, model_dir, api_keys=KEYS, redis_url=redis_server.url.rsplit("/", 1)[0] + "/12"
    )
    api = ApiProcess(settings_env(s), free_port(), tmp_path / "api.log").start()
    try:
        for key in ("alpha-key-7f3a9c1e5b2d", WRONG, "x"):
            httpx.get(f"{api.base_url}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    finally:
        api.stop()
    log = (tmp_path / "api.log").read_text()
    assert "GET /v1/jobs" in log, "the access log is on: the check below reads real log lines"
    assert "alpha-key-7f3a9c1e5b2d" not in log and "beta-key-0c8e4a6f2d9b" not in log and WRONG not in log
    assert "Bearer" not in log
    assert "key-alpha" not in worker.log_path.read_text()


def test_signed_link_signatures_are_not_logged_by_a_real_api_process(redis_server, model_dir, tmp_path):
    """A local-store link is a credential until it expires; the access log keeps its path only."""
    from tumorsynth.storage import make_store
    from tumorsynth.storage.keys import output_key

    s = make_settings(
        redis_server,
        None,
        model_dir,
        storage_dir=tmp_path / "objects",
        api_keys=KEYS,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/12",
    )
    key = output_key("alpha", "job_logged", "sample-0_t1.nii.gz")
    store = make_store(s)
    store.put_bytes(key, b"volume")
    url = store.presigned_get_url(key, 300)
    signature = url.rsplit("signature=", 1)[1]
    api = ApiProcess(settings_env(s), free_port(), tmp_path / "api.log").start()
    try:
        r = httpx.get(api.base_url + url.removeprefix(s.public_url))
    finally:
        api.stop()
    assert r.status_code == 200 and r.content == b"volume"
    log = (tmp_path / "api.log").read_text()
    assert "GET /v1/objects/tenants/alpha/jobs/job_logged/" in log and "signature=<redacted>" in log
    assert signature not in log


def test_settings_print_no_secret():
    s = Settings(
        api_keys=KEYS, s3_secret_key="s3-secret-1b9e7c", url_signing_key="signing-key-4d2a8f", webhook_secret=None
    )
    for text in (repr(s), str(s)):
        for secret in ("alpha-key-7f3a9c1e5b2d", "s3-secret-1b9e7c", "signing-key-4d2a8f"):
            assert secret not in text


@pytest.mark.parametrize(
    "env,refusal",
    [
        ({}, "without API keys"),
        ({"TUMORSYNTH_API_KEYS": "hospital-a:change-me-key-a"}, "placeholder"),  # .env.example as shipped
        ({"TUMORSYNTH_API_KEYS": "a:short-key"}, "shorter than 16"),
        (
            {
                "TUMORSYNTH_API_KEYS": KEYS,
                "TUMORSYNTH_S3_ENDPOINT": "http://127.0.0.1:9",
                "TUMORSYNTH_S3_SECRET_KEY": "minioadmin",
            },
            "well-known default",
        ),
        (
            {
                "TUMORSYNTH_API_KEYS": KEYS,
                "TUMORSYNTH_S3_ENDPOINT": "http://127.0.0.1:9",
                "TUMORSYNTH_S3_SECRET_KEY": "change-me-to-a-long-random-secret",
            },
            "placeholder",
        ),
        ({"TUMORSYNTH_API_KEYS": KEYS, "TUMORSYNTH_URL_SIGNING_KEY": "abc"}, "shorter than 16"),
    ],
)
def test_serve_refuses_to_listen_beyond_loopback_with_weak_secrets(env, refusal, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("TUMORSYNTH_")}
    r = subprocess.run(
        [sys.executable, "-m", "tumorsynth.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=base | {"TUMORSYNTH_STORAGE_DIR": str(tmp_path)} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "refusing" in out and refusal in out, out[-600:]
    for value in env.values():
        if "key" in value or "secret" in value or value == "minioadmin":
            assert value not in out  # the refusal names the setting, not the secret


def test_loopback_and_strong_secrets_are_served():
    Settings().check_safe_to_serve("127.0.0.1")
    Settings(api_keys=KEYS, s3_secret_key="x" * 40, url_signing_key="y" * 32).check_safe_to_serve("0.0.0.0")
