"""Objects as files under one folder: the embedded default. Links are HMAC-signed and served by the API."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from ..errors import InvalidRequest, NotFound, StorageUnavailable
from .base import DEFAULT_CHUNK, ObjectInfo, normalize_metadata
from .signing import sign


@contextmanager
def _io(key: str, *, writing: bool = False):
    """Missing files are missing objects; any other OS error means the store cannot serve."""
    try:
        yield
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        if not writing:
            raise NotFound(f"no object {key!r}") from exc
        raise InvalidRequest.for_field("key", f"{key!r} collides with the path of an existing object") from exc
    except FileNotFoundError as exc:
        if not writing:
            raise NotFound(f"no object {key!r}") from exc
        raise StorageUnavailable(f"local storage failed on {key!r}: {exc.strerror or exc}") from exc
    except OSError as exc:
        raise StorageUnavailable(f"local storage failed on {key!r}: {exc.strerror or exc}") from exc


def _meta_path(path: Path) -> Path:
    """Sidecars start with a dot, which no key component may, so they never collide with objects or get listed."""
    return path.with_name(f".{path.name}.meta.json")


class LocalStore:
    def __init__(self, root: Path | str, *, base_url: str, signing_key: bytes):
        self.root = Path(root).expanduser().resolve()
        self.base_url = base_url.rstrip("/")
        self.signing_key = signing_key

    def _resolve(self, parts: list[str], what: str) -> Path:
        """Refuse traversal even for a key that did not come from ``storage.keys``."""
        if any(not p or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
            raise InvalidRequest.for_field(what, "components must be non-empty and must not start with '.'")
        path = self.root.joinpath(*parts).resolve()
        if path == self.root or not path.is_relative_to(self.root):
            raise InvalidRequest.for_field(what, "must stay inside the storage folder")
        return path

    def _path(self, key: str) -> Path:
        return self._resolve(key.split("/"), "key")

    def _write(self, key: str, source: BinaryIO, content_type: str, metadata: dict[str, str] | None) -> ObjectInfo:
        path = self._path(key)
        with _io(key, writing=True):
            tmp = self._temp_beside(path)
            try:
                md5, size = hashlib.md5(usedforsecurity=False), 0
                with open(tmp, "wb") as out:
                    while chunk := source.read(DEFAULT_CHUNK):
                        md5.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                info = ObjectInfo(key, size, md5.hexdigest(), content_type, normalize_metadata(metadata))
                # Sidecar first: once the object is visible its metadata is too.
                self._write_meta(path, info)
                os.replace(tmp, path)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return info

    @staticmethod
    def _temp_beside(path: Path) -> str:
        """A temp file in the object's folder, so ``os.replace`` is atomic; retried once if a delete pruned it."""
        for attempt in range(2):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            except FileNotFoundError:
                if attempt:
                    raise
                continue
            os.close(fd)
            return tmp
        raise AssertionError("unreachable")

    @staticmethod
    def _write_meta(path: Path, info: ObjectInfo) -> None:
        meta = {"content_type": info.content_type, "metadata": info.metadata, "etag": info.etag}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, _meta_path(path))

    def _info(self, key: str, path: Path) -> ObjectInfo | None:
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            meta = json.loads(_meta_path(path).read_text())
        except (OSError, ValueError):
            meta = {}
        return ObjectInfo(key, size, meta.get("etag"), meta.get("content_type"), dict(meta.get("metadata") or {}))

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        return self._write(key, io.BytesIO(data), content_type, metadata)

    def put_file(
        self,
        key: str,
        path: Path | str,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        with open(path, "rb") as source:
            return self._write(key, source, content_type, metadata)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with _io(key):
            return path.read_bytes()

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        with _io(key):
            f = open(path, "rb")
        return self._stream(f, chunk_size)

    @staticmethod
    def _stream(f: BinaryIO, chunk_size: int) -> Iterator[bytes]:
        with f:
            while chunk := f.read(chunk_size):
                yield chunk

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return self._info(key, path) if path.is_file() else None

    def list(self, prefix: str) -> list[ObjectInfo]:
        folder, _, _ = prefix.rpartition("/")
        base = self._resolve(folder.split("/"), "prefix") if folder else self.root
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                path = Path(dirpath, name)
                if name.startswith(".") or path.is_symlink():
                    continue
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and (info := self._info(key, path)) is not None:
                    found.append(info)
        return sorted(found, key=lambda i: i.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with suppress(NotFound), _io(key):  # deleting a missing object is not an error
            path.unlink(missing_ok=True)
            _meta_path(path).unlink(missing_ok=True)
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        """Remove folders left empty, so listing a tenant does not walk the skeletons of deleted jobs."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise InvalidRequest.for_field("prefix", "must not be empty (that would delete everything)")
        doomed = self.list(prefix)
        for info in doomed:
            self.delete(info.key)
        return len(doomed)

    def presigned_get_url(self, key: str, expires_seconds: int) -> str | None:
        self._path(key)
        if not self.base_url or not self.signing_key:
            return None
        expires_at = int(time.time()) + int(expires_seconds)
        signature = sign(key, expires_at, self.signing_key)
        return f"{self.base_url}/v1/objects/{quote(key, safe='/')}?expires={expires_at}&signature={signature}"

    def ping(self) -> None:
        """Creates the folder if needed (the embedded setup has no bucket-init step), then checks it is writable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create the storage folder {self.root}: {exc.strerror or exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"the storage folder {self.root} is not writable")

    def ensure_bucket(self) -> None:
        self.ping()
