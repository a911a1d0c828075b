"""What every object store offers: the protocol the API and the workers program against."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

DEFAULT_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. ``list`` may leave ``content_type`` and ``metadata`` empty (S3 does); ``stat`` fills them."""

    key: str
    size: int
    etag: str | None = None
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ObjectStore(Protocol):
    """Keys come from ``storage.keys``. Missing objects raise ``NotFound``; an unreachable store ``StorageUnavailable``.

    User metadata keys are lower-cased, as S3 does.
    """

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo: ...

    def put_file(
        self,
        key: str,
        path: Path | str,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo: ...

    def get_bytes(self, key: str) -> bytes: ...

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """Opens the object at once (so ``NotFound`` comes before the first byte is sent), then streams it."""
        ...

    def stat(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a plain string prefix, not a folder), sorted by key."""
        ...

    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing object is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every object under a non-empty ``prefix``; returns how many."""
        ...

    def presigned_get_url(self, key: str, expires_seconds: int) -> str | None:
        """A URL that fetches the object without credentials, or None when this store cannot make one."""
        ...

    def ping(self) -> None:
        """Raises ``StorageUnavailable`` unless the store answers and its bucket exists."""
        ...

    def ensure_bucket(self) -> None: ...


def normalize_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (metadata or {}).items()}
