"""Objects in an S3 bucket (MinIO in production, moto in the tests) through the minio SDK."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import Tags
from minio.datatypes import Object
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from ..errors import InvalidRequest, NotFound, StorageUnavailable
from .base import DEFAULT_CHUNK, ObjectInfo, normalize_metadata
from .keys import object_kind

PART_SIZE = 16 * 1024**2
MISSING = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
# Codes that a later try may not see; anything else (AccessDenied, NoSuchBucket, ...) needs a person to fix it.
BUSY = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "XMinioServerNotInitialized",
    "XMinioStorageFull",
}
META_PREFIX = "x-amz-meta-"


def parse_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``host:port`` or ``http(s)://host:port`` → (``host:port``, secure); a scheme overrides ``secure``."""
    if "://" not in endpoint:
        return endpoint.rstrip("/"), secure
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
        raise ValueError(f"S3 endpoint must look like 'host:port' or 'http(s)://host:port', got {endpoint!r}")
    return parts.netloc, parts.scheme == "https"


def _unavailable(message: str, *, transient: bool = True) -> StorageUnavailable:
    err = StorageUnavailable(message)
    err.transient = transient
    return err


@contextmanager
def _translate(what: str):
    """SDK and socket errors → the service's errors, so callers see ``NotFound`` or ``StorageUnavailable`` only."""
    try:
        yield
    except S3Error as exc:
        if exc.code in MISSING:
            raise NotFound(f"no object {what!r}") from exc
        raise _unavailable(f"S3 refused {what!r}: {exc.code}: {exc.message}", transient=exc.code in BUSY) from exc
    except (ServerError, InvalidResponseError) as exc:
        raise _unavailable(f"S3 answered {what!r} with an error: {exc}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _unavailable(f"S3 is unreachable ({type(exc).__name__}) while accessing {what!r}") from exc


class S3Store:
    # The API's signed-link route serves local folders only; S3 presigns its own links.
    signing_key: bytes | None = None

    def __init__(
        self,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        bucket: str,
        region: str = "us-east-1",
        secure: bool = False,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ):
        host, secure = parse_endpoint(endpoint, secure)
        self.bucket, self.region = bucket, region
        # No retries here: callers retry transient errors with backoff, and an unreachable S3 must fail fast.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout), retries=False, maxsize=16
        )
        self.client = Minio(
            host, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http
        )

    def _info(self, key: str, obj: Object) -> ObjectInfo:
        meta = {
            k.lower()[len(META_PREFIX) :]: v
            for k, v in (obj.metadata or {}).items()
            if k.lower().startswith(META_PREFIX)
        }
        return ObjectInfo(key, int(obj.size or 0), obj.etag, obj.content_type, meta)

    def _put(
        self, key: str, data: BinaryIO, length: int, content_type: str, metadata: dict[str, str] | None
    ) -> ObjectInfo:
        meta = normalize_metadata(metadata)
        tags = None
        if kind := object_kind(key):  # lifecycle rules expire objects by this tag (docker/minio-init.sh)
            tags = Tags.new_object_tags()
            tags["kind"] = kind
        with _translate(key):
            minio_meta = cast("dict[str, str | list[str] | tuple[str]]", meta) or None
            result = self.client.put_object(
                self.bucket,
                key,
                data,
                length,
                content_type=content_type,
                metadata=minio_meta,
                part_size=PART_SIZE,
                tags=tags,
            )
        return ObjectInfo(key, length, result.etag, content_type, meta)

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        return self._put(key, io.BytesIO(data), len(data), content_type, metadata)

    def put_file(
        self,
        key: str,
        path: Path | str,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        # Opened here, not by the SDK, so a missing local file is not mistaken for an unreachable S3.
        with open(path, "rb") as f:
            return self._put(key, f, os.fstat(f.fileno()).st_size, content_type, metadata)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        with _translate(key):
            response = self.client.get_object(self.bucket, key)
        return self._stream(key, response, chunk_size)

    @staticmethod
    def _stream(key: str, response, chunk_size: int) -> Iterator[bytes]:
        try:
            with _translate(key):
                yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with _translate(key):
                return self._info(key, self.client.stat_object(self.bucket, key))
        except NotFound:
            return None

    def list(self, prefix: str) -> list[ObjectInfo]:
        with _translate(prefix):
            objects = list(self.client.list_objects(self.bucket, prefix=prefix, recursive=True))
        return sorted(
            (ObjectInfo(o.object_name, int(o.size or 0), o.etag) for o in objects if not o.is_dir), key=lambda i: i.key
        )

    def delete(self, key: str) -> None:
        with _translate(key):
            self.client.remove_object(self.bucket, key)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise InvalidRequest.for_field("prefix", "must not be empty (that would delete everything)")
        keys = [info.key for info in self.list(prefix)]
        with _translate(prefix):
            # remove_objects is lazy: iterating its errors is what sends the requests.
            errors = list(self.client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        if errors:
            raise _unavailable(f"S3 kept {len(errors)} of {len(keys)} objects under {prefix!r}: {errors[0].message}")
        return len(keys)

    def presigned_get_url(self, key: str, expires_seconds: int) -> str | None:
        with _translate(key):
            return self.client.presigned_get_object(self.bucket, key, expires=timedelta(seconds=expires_seconds))

    def ping(self) -> None:
        with _translate(self.bucket):
            exists = self.client.bucket_exists(self.bucket)
        if not exists:
            raise _unavailable(
                f"S3 bucket {self.bucket!r} does not exist; create it (tumorsynth's bucket-init step)", transient=False
            )

    def ensure_bucket(self) -> None:
        with _translate(self.bucket):
            if self.client.bucket_exists(self.bucket):
                return
            try:
                self.client.make_bucket(self.bucket, location=self.region)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
