"""What only the local-folder store does: signed links, sidecars, and refusing paths outside its root."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tumorsynth.errors import InvalidRequest, Unauthorized
from tumorsynth.settings import Settings
from tumorsynth.storage import LocalStore, make_store
from tumorsynth.storage.keys import output_key
from tumorsynth.storage.signing import sign, verify

from .conftest import BASE_URL, SIGNING_KEY

KEY = output_key("alpha", "job1", "mask.nii.gz")


@pytest.fixture
def local(tmp_path):
    return LocalStore(tmp_path / "objects", base_url=BASE_URL + "/", signing_key=SIGNING_KEY)


def _parts(url: str) -> tuple[str, int, str]:
    split = urlsplit(url)
    query = parse_qs(split.query)
    return unquote(split.path.removeprefix("/v1/objects/")), int(query["expires"][0]), query["signature"][0]


def test_signed_url_verifies(local):
    local.put_bytes(KEY, b"x")
    url = local.presigned_get_url(KEY, 120)
    assert url.startswith(f"{BASE_URL}/v1/objects/{KEY}?expires=")
    key, expires, signature = _parts(url)
    assert key == KEY and time.time() + 100 < expires <= time.time() + 121
    verify(key, expires, signature, SIGNING_KEY)


def test_signed_url_expired(local):
    key, expires, signature = _parts(local.presigned_get_url(KEY, 60))
    with pytest.raises(Unauthorized) as err:
        verify(key, expires, signature, SIGNING_KEY, now=expires + 1)
    assert err.value.code == "url_expired"


@pytest.mark.parametrize("tamper", ["key", "expires", "signature", "secret"])
def test_signed_url_tampered(local, tamper):
    key, expires, signature = _parts(local.presigned_get_url(KEY, 60))
    secret = SIGNING_KEY
    if tamper == "key":
        key = output_key("beta", "job1", "mask.nii.gz")
    elif tamper == "expires":
        expires += 3600
    elif tamper == "signature":
        signature = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    else:
        secret = b"another-key"
    with pytest.raises(Unauthorized) as err:
        verify(key, expires, signature, secret)
    assert err.value.code == "bad_signature"


def test_signature_is_hmac_over_key_and_expiry():
    assert sign("a", 1, b"k") != sign("a", 2, b"k") != sign("b", 1, b"k")
    assert len(sign("a", 1, b"k")) == 64
    with pytest.raises(Unauthorized):
        verify("a", 1, "ünïcode", b"k", now=0)


def test_sidecars_are_hidden_and_writes_leave_no_temp_files(local):
    local.put_bytes(KEY, b"x", metadata={"a": "b"})
    assert [i.key for i in local.list("")] == [KEY]
    folder = local.root / "tenants/alpha/jobs/job1/outputs"
    assert sorted(p.name for p in folder.iterdir()) == [".mask.nii.gz.meta.json", "mask.nii.gz"]
    local.delete(KEY)
    assert not (local.root / "tenants").exists()  # empty folders pruned


@pytest.mark.parametrize(
    "key",
    ["../x", "tenants/../../etc/passwd", "/etc/passwd", "a//b", ".hidden/x", "a/.meta.json", "a\x00b", "a\\..\\b", ""],
)
def test_local_refuses_paths_outside_root(local, key):
    with pytest.raises(InvalidRequest):
        local.put_bytes(key, b"x")
    with pytest.raises(InvalidRequest):
        local.stat(key)


def test_local_refuses_symlink_escape(local, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    local.root.mkdir(parents=True)
    (local.root / "link").symlink_to(outside)
    with pytest.raises(InvalidRequest):
        local.get_bytes("link/secret")


def test_make_store_picks_by_settings(tmp_path):
    local = make_store(Settings(storage_dir=tmp_path, url_signing_key="k"))
    assert isinstance(local, LocalStore) and local.signing_key == b"k"
    first, second = make_store(Settings(storage_dir=tmp_path)), make_store(Settings(storage_dir=tmp_path))
    assert first.signing_key == second.signing_key and len(first.signing_key) >= 32  # one key per process
    s3 = make_store(Settings(s3_endpoint="https://s3.example:9000", s3_access_key="a", s3_secret_key="b"))
    assert type(s3).__name__ == "S3Store"
