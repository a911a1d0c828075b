from __future__ import annotations

import uuid

import pytest

from tumorsynth.storage import LocalStore, S3Store

from ..support.s3 import ACCESS_KEY, SECRET_KEY, start_moto_server

SIGNING_KEY = b"test-signing-key"
BASE_URL = "http://testserver"


@pytest.fixture(scope="session")
def moto_endpoint():
    server, endpoint = start_moto_server()
    yield endpoint
    server.stop()


def make_s3(endpoint: str) -> S3Store:
    store = S3Store(endpoint, ACCESS_KEY, SECRET_KEY, f"ts-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    return store


@pytest.fixture(params=["s3", "local"])
def store(request, tmp_path):
    """Each contract test runs against both stores; S3 gets a fresh bucket, local a fresh folder."""
    if request.param == "s3":
        return make_s3(request.getfixturevalue("moto_endpoint"))
    local = LocalStore(tmp_path / "objects", base_url=BASE_URL, signing_key=SIGNING_KEY)
    local.ensure_bucket()
    return local
