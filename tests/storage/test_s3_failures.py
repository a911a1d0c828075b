"""An unreachable S3 fails fast with StorageUnavailable; endpoints parse in both spellings."""

from __future__ import annotations

import time

import pytest

from tumorsynth.errors import StorageUnavailable
from tumorsynth.storage.s3 import S3Store, parse_endpoint

from ..support.s3 import closed_port


@pytest.mark.parametrize("op", ["ping", "put", "get", "stat", "list"])
def test_closed_port_is_unavailable_quickly(op):
    store = S3Store(f"127.0.0.1:{closed_port()}", "test", "test-secret", "bucket")
    calls = {
        "ping": store.ping,
        "put": lambda: store.put_bytes("k", b"x"),
        "get": lambda: store.get_bytes("k"),
        "stat": lambda: store.stat("k"),
        "list": lambda: store.list(""),
    }
    start = time.monotonic()
    with pytest.raises(StorageUnavailable) as err:
        calls[op]()
    assert err.value.transient
    assert time.monotonic() - start < 3


def test_unroutable_host_times_out_on_connect():
    # TEST-NET-1 drops packets; the connect timeout, not the OS default, must bound the wait.
    store = S3Store("192.0.2.1:9000", "test", "test-secret", "bucket", connect_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.ping()
    assert time.monotonic() - start < 3


def test_missing_bucket_is_not_transient(moto_endpoint):
    store = S3Store(moto_endpoint, "test", "test-secret", "never-created-bucket")
    with pytest.raises(StorageUnavailable) as err:
        store.ping()
    assert not err.value.transient


@pytest.mark.parametrize(
    "endpoint, secure, expected",
    [
        ("minio:9000", False, ("minio:9000", False)),
        ("minio:9000", True, ("minio:9000", True)),
        ("http://minio:9000", True, ("minio:9000", False)),
        ("https://minio:9000/", False, ("minio:9000", True)),
    ],
)
def test_parse_endpoint(endpoint, secure, expected):
    assert parse_endpoint(endpoint, secure) == expected


def test_parse_endpoint_refuses_paths():
    with pytest.raises(ValueError):
        parse_endpoint("http://minio:9000/bucket", False)
