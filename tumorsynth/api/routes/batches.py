"""``/v1/batches``: balanced augmentation batches and their manifests."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from ...errors import InvalidRequest, NotFound
from ...jobs.batches import BatchRequest, view
from ...jobs.maskbank import check_class
from ...jobs.validation import from_pydantic, load_json
from ...schemas import BankMask, BankMaskList, Batch
from ..deps import BankDep, BatchesDep, BatchIdDep, MaskIdDep, RegistryDep, SettingsDep, StoreDep, TenantDep
from ..uploads import read_job_form, read_json_body

router = APIRouter(prefix="/v1/batches", tags=["batches"])
masks_router = APIRouter(prefix="/v1/masks", tags=["masks"])


def _form(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "required": required, "properties": properties}


MASK_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _form(
                    {
                        "request": {"type": "string", "description": 'JSON: {"tumor_class": "LGG"}'},
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "tumour mask, NIfTI, BraTS labels",
                        },
                    },
                    ["request", "mask"],
                )
            }
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BatchRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": _form(
                    {
                        "request": {"type": "string", "description": 'BatchRequest as JSON, with "masks": "upload"'},
                        "mask": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                    ["request"],
                )
            },
        },
    }
}


@masks_router.post("", status_code=201, response_model=BankMask, openapi_extra=MASK_FORM)
async def add_mask(
    request: Request, tenant: TenantDep, bank: BankDep, settings: SettingsDep, registry: RegistryDep
) -> dict:
    """Multipart: ``request`` = {"tumor_class": "LGG"} and a ``mask`` file on the BraTS grid (BraTS labels)."""
    raw, files = await read_job_form(request, settings)
    body = load_json(raw or "null")
    declared = {c for entry in registry.list() for c in entry.classes}
    cls = check_class(body.get("tumor_class") if isinstance(body, dict) else None, declared)
    extra = sorted(set(files) - {"mask"})
    if extra or "mask" not in files:
        raise InvalidRequest.for_field(extra[0] if extra else "mask", "send exactly one file part named 'mask'")
    return await run_in_threadpool(bank.add, tenant, cls, files["mask"])


@masks_router.get("", response_model=BankMaskList)
def list_masks(tenant: TenantDep, bank: BankDep) -> dict:
    """The tenant's bank masks: ``{"masks": [{"id", "class", "size"}]}``."""
    return {"masks": bank.list(tenant)}


@masks_router.delete("/{mask_id}", status_code=204)
def delete_mask(mask_id: MaskIdDep, tenant: TenantDep, bank: BankDep) -> Response:
    bank.delete(tenant, mask_id)
    return Response(status_code=204)


@router.post("", status_code=202, response_model=Batch, openapi_extra=BATCH_BODY)
async def submit_batch(
    request: Request, response: Response, tenant: TenantDep, batches: BatchesDep, settings: SettingsDep
) -> dict:
    """JSON body (masks from the bank), or multipart with a ``request`` JSON field and ``mask`` file parts."""
    uploaded: list[bytes] = []
    raw: str | bytes | None
    if request.headers.get("content-type", "").startswith("multipart/"):
        raw, files = await read_job_form(request, settings, multiple=True)
        uploaded = files.get("mask", [])
    else:
        raw = await read_json_body(request)
    data = load_json(raw or b"null")
    if not isinstance(data, dict):
        raise InvalidRequest.for_field("request", "send the batch as a JSON object")
    try:
        req = BatchRequest.model_validate(data, strict=True)  # as job requests: no true-as-1, no "2"-as-2
    except ValidationError as exc:
        raise from_pydantic(exc) from exc
    rec = await run_in_threadpool(batches.submit, tenant, req, uploaded)
    response.headers["Location"] = f"/v1/batches/{rec.id}"
    return view(batches, rec)


@router.get("/{batch_id}", response_model=Batch)
def get_batch(batch_id: BatchIdDep, tenant: TenantDep, batches: BatchesDep) -> dict:
    return view(batches, batches.ensure_manifest(batches.get(tenant, batch_id)))


@router.post("/{batch_id}/cancel", status_code=202, response_model=Batch)
def cancel_batch(batch_id: BatchIdDep, tenant: TenantDep, batches: BatchesDep) -> dict:
    return view(batches, batches.cancel(tenant, batch_id))


@router.get("/{batch_id}/manifest.{fmt}", responses={200: {"content": {"text/csv": {}, "application/json": {}}}})
def get_manifest(batch_id: BatchIdDep, fmt: str, tenant: TenantDep, batches: BatchesDep, store: StoreDep):
    if fmt not in ("csv", "json"):
        raise NotFound("manifests come as manifest.csv or manifest.json")
    rec = batches.ensure_manifest(batches.get(tenant, batch_id))
    if rec.manifest is None:
        raise NotFound(f"batch {batch_id} is still running; its manifest is written when every job has finished")
    media = "text/csv" if fmt == "csv" else "application/json"
    return StreamingResponse(store.iter_chunks(rec.manifest[fmt]), media_type=media)
