"""Signed download links for objects in a local-folder store (S3 presigns its own)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from ...errors import NotFound
from ...storage.signing import verify
from ..deps import SettingsDep, StoreDep

router = APIRouter(tags=["objects"])


@router.get("/v1/objects/{key:path}")
def signed_object(
    key: str,
    store: StoreDep,
    settings: SettingsDep,
    expires: int = Query(...),
    signature: str = Query(..., max_length=128),
):
    """The signature covers the key and expiry: it is the authorisation, scoped to one object."""
    # S3 stores presign their own links: they have no signing key, and verify() refuses every link then
    verify(key, expires, signature, getattr(store, "signing_key", None))
    info = store.stat(key)
    if info is None:
        raise NotFound("no such object")
    name = key.rsplit("/", 1)[-1]
    return StreamingResponse(
        store.iter_chunks(key),
        media_type=info.content_type or "application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Content-Length": str(info.size)},
    )
