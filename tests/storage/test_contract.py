"""The ObjectStore contract, run against S3 (moto over a socket) and the local folder alike."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

from tumorsynth.errors import NotFound
from tumorsynth.storage.keys import job_prefix, output_key

KEY = output_key("alpha", "job1", "sample-0_t1.nii.gz")


def test_put_get_stat_round_trip(store):
    data = b"\x00\x01nifti" * 1000
    put = store.put_bytes(KEY, data, "application/gzip")
    assert put.key == KEY and put.size == len(data) and put.etag

    assert store.get_bytes(KEY) == data
    info = store.stat(KEY)
    assert info is not None
    assert (info.key, info.size, info.content_type, info.etag) == (KEY, len(data), "application/gzip", put.etag)


def test_overwrite_replaces_content(store):
    store.put_bytes(KEY, b"first")
    store.put_bytes(KEY, b"second version")
    assert store.get_bytes(KEY) == b"second version"
    assert store.stat(KEY).size == len(b"second version")


def test_metadata_round_trip(store):
    store.put_bytes(KEY, b"x", "application/json", metadata={"Job-Id": "job1", "sha256": "abc"})
    info = store.stat(KEY)
    assert info.metadata == {"job-id": "job1", "sha256": "abc"}
    assert info.content_type == "application/json"


def test_missing_key(store):
    missing = output_key("alpha", "job1", "nope.nii.gz")
    assert store.stat(missing) is None
    with pytest.raises(NotFound):
        store.get_bytes(missing)
    with pytest.raises(NotFound):
        store.iter_chunks(missing)  # eagerly, before any byte would be streamed
    store.delete(missing)  # idempotent


def test_list_is_a_string_prefix_sorted_and_hides_nothing_else(store):
    for job, name in [("job1", "b.json"), ("job1", "a.nii.gz"), ("job10", "a.nii.gz"), ("job2", "c.json")]:
        store.put_bytes(output_key("alpha", job, name), name.encode(), metadata={"k": "v"})
    listed = store.list(job_prefix("alpha", "job1"))
    assert [i.key for i in listed] == [output_key("alpha", "job1", "a.nii.gz"), output_key("alpha", "job1", "b.json")]
    assert [i.size for i in listed] == [len(b"a.nii.gz"), len(b"b.json")]
    assert len(store.list("tenants/alpha/jobs/job1")) == 3  # no trailing slash: job10 matches too
    assert store.list("tenants/beta/") == []


def test_delete_and_delete_prefix(store):
    keys = [output_key("alpha", "job1", f"f{i}.json") for i in range(3)]
    other = output_key("alpha", "job2", "f0.json")
    for k in [*keys, other]:
        store.put_bytes(k, b"{}")
    store.delete(keys[0])
    assert store.stat(keys[0]) is None
    assert store.delete_prefix(job_prefix("alpha", "job1")) == 2
    assert store.list(job_prefix("alpha", "job1")) == []
    assert store.get_bytes(other) == b"{}"
    with pytest.raises(Exception, match="prefix"):
        store.delete_prefix("")


def test_iter_chunks(store):
    data = os.urandom(300_000)
    store.put_bytes(KEY, data)
    chunks = list(store.iter_chunks(KEY, chunk_size=64 * 1024))
    assert b"".join(chunks) == data
    assert len(chunks) >= 2 and all(len(c) <= 64 * 1024 for c in chunks)


def test_put_file_large(store, tmp_path):
    path = tmp_path / "big.bin"
    data = os.urandom(20 * 1024**2)
    path.write_bytes(data)
    put = store.put_file(KEY, path, "application/octet-stream", metadata={"sha256": hashlib.sha256(data).hexdigest()})
    assert put.size == len(data)
    got = hashlib.sha256(b"".join(store.iter_chunks(KEY))).hexdigest()
    assert got == store.stat(KEY).metadata["sha256"] == hashlib.sha256(data).hexdigest()


def test_put_file_missing_source_is_not_a_storage_error(store, tmp_path):
    with pytest.raises(FileNotFoundError):
        store.put_file(KEY, tmp_path / "absent.bin")


def test_presigned_url_carries_an_expiry(store):
    store.put_bytes(KEY, b"payload")
    url = store.presigned_get_url(KEY, 600)
    assert url is not None
    query = parse_qs(urlsplit(url).query)
    assert query.get("X-Amz-Expires") == ["600"] or "expires" in query


def test_ping_and_ensure_bucket_are_idempotent(store):
    store.ensure_bucket()
    store.ping()


def test_s3_presigned_url_is_fetchable(moto_endpoint):
    from .conftest import make_s3

    s3 = make_s3(moto_endpoint)
    s3.put_bytes(KEY, b"presigned payload")
    url = s3.presigned_get_url(KEY, 300)
    assert url.startswith(moto_endpoint)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned payload"
