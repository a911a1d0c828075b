"""``/v1/jobs``: submit, read, list, cancel, download."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from ...errors import Conflict, NotFound
from ...schemas import Job, JobList
from ..deps import JobIdDep, JobsDep, ServicesDep, SettingsDep, StoreDep, SubmissionsDep, TenantDep
from ..downloads import object_response
from ..events import EventStream, job_events
from ..live import cached_preview
from ..render import job_view
from ..uploads import JOB_FORM_SCHEMA, read_job_form

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=202,
    response_model=Job,
    openapi_extra=JOB_FORM_SCHEMA,
    responses={413: {"description": "Request too large"}, 422: {"description": "Invalid request"}},
)
async def submit_job(
    request: Request,
    response: Response,
    tenant: TenantDep,
    submissions: SubmissionsDep,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Job:
    """Multipart: a JSON field ``request`` and one NIfTI file part per model input (``mask``, ``t1``, ...)."""
    request_json, files = await read_job_form(request, settings)
    sub = await run_in_threadpool(submissions.submit, tenant, request_json, files, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{sub.record.id}"
    if sub.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return job_view(sub.record, store, settings)


@router.get("", response_model=JobList)
def list_jobs(
    tenant: TenantDep,
    jobs: JobsDep,
    store: StoreDep,
    settings: SettingsDep,
    status: Literal["queued", "running", "succeeded", "failed", "canceling", "canceled"] | None = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    records, next_cursor = jobs.list(tenant, status=status, model=model, cursor=cursor, limit=limit)
    return JobList(jobs=[job_view(r, store, settings) for r in records], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=Job)
def get_job(job_id: JobIdDep, tenant: TenantDep, jobs: JobsDep, store: StoreDep, settings: SettingsDep) -> Job:
    return job_view(jobs.get_for_tenant(tenant, job_id), store, settings)


@router.post("/{job_id}/cancel", response_model=Job, status_code=202)
def cancel_job(job_id: JobIdDep, tenant: TenantDep, jobs: JobsDep, store: StoreDep, settings: SettingsDep) -> Job:
    """Queued: canceled at once. Running: ``canceling``, stopped at the next sampling step. Finished: unchanged."""
    return job_view(jobs.cancel(tenant, job_id), store, settings)


@router.get("/{job_id}/preview.png", responses={200: {"content": {"image/png": {}}}})
def preview(
    job_id: JobIdDep, tenant: TenantDep, jobs: JobsDep, store: StoreDep, settings: SettingsDep, services: ServicesDep
) -> Response:
    """Axial/coronal/sagittal montage of sample 0's outputs through the tumour, the mask outlined (drawn once)."""
    rec = jobs.get_for_tenant(tenant, job_id)
    if rec.status != "succeeded":
        raise Conflict(f"job {job_id} is {rec.status}; a preview exists once it has succeeded")
    return Response(cached_preview(rec, store, settings, services.redis), media_type="image/png")


@router.get("/{job_id}/events", responses={429: {"description": "Too many open event streams for the tenant"}})
async def events(job_id: JobIdDep, request: Request, tenant: TenantDep, jobs: JobsDep, services: ServicesDep):
    """Server-sent events: the job now, then every status or progress change until it finishes."""
    rec = await run_in_threadpool(jobs.get_for_tenant, tenant, job_id)  # Redis off the event loop
    slots = services.stream_slots
    slots.take(tenant)
    try:
        return EventStream(
            job_events(services.settings, jobs, rec, request),
            lambda: slots.give_back(tenant),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    except Exception:
        slots.give_back(tenant)
        raise


@router.get("/{job_id}/outputs/{name}", responses={307: {"description": "Redirect to a presigned URL"}})
def get_output(job_id: JobIdDep, name: str, tenant: TenantDep, jobs: JobsDep, store: StoreDep, settings: SettingsDep):
    rec = jobs.get_for_tenant(tenant, job_id)
    out = next((o for o in rec.outputs if o.name == name), None)
    if out is None:
        raise NotFound(f"job {job_id} has no output '{name}'")
    media = "application/json" if name.endswith(".json") else "application/gzip"
    return object_response(store, settings, out.key, name, media, out.size)
