"""``/v1/batches/{id}/dataset``: a finished batch as a BIDS derivatives dataset (jobs/bids.py defines it).

File by file (the index, then each file; volumes presigned where the store can, as job outputs are) for clients
that resume or parallelise, and as one zip streamed while it is read (zipstream-ng: nothing is staged on disk or held
in memory; volumes are gzip already, so entries are stored, not deflated again).
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from zipstream import ZipStream

from ...errors import NotFound
from ...jobs.bids import DatasetFile, made_from_sidecar
from ...storage.base import ObjectStore
from ..deps import BatchesDep, BatchIdDep, SettingsDep, StoreDep, TenantDep
from ..downloads import object_response

router = APIRouter(prefix="/v1/batches", tags=["batches"])


def _media(path: str) -> str:
    if path.endswith(".nii.gz"):
        return "application/gzip"
    if path.endswith(".json"):
        return "application/json"
    return "text/tab-separated-values" if path.endswith(".tsv") else "text/plain; charset=utf-8"


def _made(store: ObjectStore, f: DatasetFile) -> bytes:
    if f.content is not None:
        return f.content
    assert f.sidecar_of is not None, f.path  # dataset_files gives every file one or the other
    return made_from_sidecar(f, store.get_bytes(f.sidecar_of))


@router.get("/{batch_id}/dataset")
def dataset_index(batch_id: BatchIdDep, tenant: TenantDep, batches: BatchesDep) -> dict:
    """``{"files": [{"path", "url"}]}``: every file of the batch's BIDS dataset and where to fetch it."""
    files = batches.dataset(batches.get(tenant, batch_id))
    return {"files": [{"path": f.path, "url": f"/v1/batches/{batch_id}/dataset/{f.path}"} for f in files]}


@router.get("/{batch_id}/dataset/{path:path}", responses={307: {"description": "Redirect to a presigned URL"}})
def dataset_file(
    batch_id: BatchIdDep, path: str, tenant: TenantDep, batches: BatchesDep, store: StoreDep, settings: SettingsDep
):
    f = next((f for f in batches.dataset(batches.get(tenant, batch_id)) if f.path == path), None)
    if f is None:
        raise NotFound(
            f"batch {batch_id}'s dataset has no file '{path}'; GET /v1/batches/{batch_id}/dataset lists them"
        )
    if f.key is not None:
        return object_response(store, settings, f.key, path.rsplit("/", 1)[-1], _media(path))
    return Response(_made(store, f), media_type=_media(path))


def _lazy(store: ObjectStore, f: DatasetFile) -> Iterator[bytes]:
    """The file's bytes, read only when the zip reaches it."""
    if f.key is not None:
        yield from store.iter_chunks(f.key)
    else:
        yield _made(store, f)


@router.get("/{batch_id}/dataset.zip", responses={200: {"content": {"application/zip": {}}}})
async def dataset_zip(batch_id: BatchIdDep, tenant: TenantDep, batches: BatchesDep, store: StoreDep):
    """The whole dataset as ``{batch_id}/...`` in one zip, streamed."""
    files = await run_in_threadpool(lambda: batches.dataset(batches.get(tenant, batch_id)))
    zs = ZipStream(sized=False)
    for f in files:
        zs.add(_lazy(store, f), f"{batch_id}/{f.path}")
    return StreamingResponse(
        iter(zs),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{batch_id}-bids.zip"'},
    )
