"""One stored object as an HTTP answer: a 307 to a presigned URL where the store makes one (S3), else streamed."""

from __future__ import annotations

from fastapi.responses import RedirectResponse, StreamingResponse

from ..settings import Settings
from ..storage.base import ObjectStore


def object_response(
    store: ObjectStore, settings: Settings, key: str, filename: str, media: str, size: int | None = None
):
    url = store.presigned_get_url(key, settings.presign_expiry_seconds)
    if url is not None and not url.startswith(settings.public_url):
        return RedirectResponse(url, status_code=307)
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if size is not None:
        headers["Content-Length"] = str(size)
    return StreamingResponse(store.iter_chunks(key), media_type=media, headers=headers)
