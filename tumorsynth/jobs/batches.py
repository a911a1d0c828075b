"""Balanced augmentation batches: plan how many of each class to make, fan out into jobs, count, write a manifest.

``POST /v1/batches`` only checks the request (and any uploaded masks), stores the record in state ``planning`` and
queues a planning task: making bank masks takes seconds per subject, too long for a request (issue 14, #10). A
worker then makes the masks and submits the jobs (``batch_planning.BatchPlanner``); a batch it cannot plan ends
``failed`` with an error saying why.

No Celery chords (their callback can be lost on Redis): every job carries its ``batch_id`` and the job store counts
terminal transitions into ``ts:batch:{id}:counts`` in the same transaction that records them. Whoever reads a batch
whose counts reach the total builds the manifest, once (a Redis lock), from the job records.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from collections.abc import Callable
from typing import Annotated, Literal, cast

import redis
from pydantic import BaseModel, Field, StringConstraints, model_validator

from ..errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from ..imaging.intensity import native_scale, scale_errors
from ..imaging.labels import validate_mask
from ..imaging.nifti import read_volume
from ..models.options import check_options
from ..schemas import Options
from ..storage.keys import batch_key
from ..storage.retry import with_retries
from . import keys as redis_keys
from .bids import DatasetFile, add_bids_columns, dataset_files, participant_labels
from .records import new_id, now, rfc3339
from .store import JobStore

log = logging.getLogger(__name__)

ClassName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MAX_BATCH_JOBS = 2000
MANIFEST_COLUMNS = (
    "subject_id",
    "class",
    "modality",
    "image",
    "mask",
    "model",
    "checkpoint_sha256",
    "sampler",
    "steps",
    "seed",
    "synthetic",
    "intensity",
    "participant_id",
    "bids_image",
    "bids_mask",
)  # where the row sits in the batch's BIDS dataset


class BatchRequest(BaseModel):
    model_config = {"extra": "forbid"}

    model: Annotated[str, StringConstraints(min_length=3, max_length=128)]
    class_counts: dict[ClassName, Annotated[int, Field(ge=0, le=10**6)]] = Field(..., min_length=1, max_length=16)
    target: Literal["balance"] | None = None
    total_per_class: int | None = Field(None, ge=1, le=MAX_BATCH_JOBS)
    modalities: list[Annotated[str, StringConstraints(min_length=1, max_length=16)]] | None = None
    seed: int = Field(0, ge=0, le=2**31 - 1)
    masks: Literal["bank", "upload"] = "bank"
    sampler: dict | None = None
    options: Options | None = Field(None, max_length=16)  # every job's options, as in a job request
    intensity: Literal["zscore", "unit", "scanner"] | None = None  # every job's intensity scale, as in a job request

    @model_validator(mode="after")
    def _one_target(self) -> BatchRequest:
        if (self.target is None) == (self.total_per_class is None):
            raise ValueError('give either "target": "balance" or "total_per_class": N (one of them)')
        return self


def plan(class_counts: dict[str, int], target: str | None, total_per_class: int | None) -> dict[str, int]:
    """How many synthetic subjects each class needs: up to the largest class, or up to ``total_per_class``."""
    goal = max(class_counts.values()) if target == "balance" else int(total_per_class or 0)
    return {c: max(0, goal - n) for c, n in class_counts.items()}


counts_key = redis_keys.batch_counts


PLANNING = redis_keys.BATCHES_PLANNING  # zset: batch id → when it was queued for planning (reconciliation reads it)


class BatchRecord(BaseModel):
    id: str
    tenant: str
    model: str
    request: dict
    plan: dict[str, int]
    subjects: list[dict] = []  # {subject_id, class, job_id, seed}
    created_at: float
    cancel_requested: bool = False
    manifest: dict[str, str] | None = None  # {"csv": key, "json": key}
    error: dict | None = None
    state: Literal["planning", "planned", "failed"] = "planned"  # records from before planning in workers: planned
    uploads: list[str] = []  # object keys of the masks uploaded with the batch, until it is planned
    plan_attempts: int = 0  # planning tasks started (a planner that kills its worker is redelivered: capped)
    resends: int = 0  # planning tasks sent again after the broker lost one (reconciliation)


MaskProvider = Callable[[str, str, int, int], list[bytes]]  # (tenant, class, n, seed) → NIfTI masks


class BatchService:
    def __init__(self, jobs: JobStore, submissions, store, registry, masks: MaskProvider | None = None):
        self.jobs, self.submissions, self.store, self.registry, self.masks = jobs, submissions, store, registry, masks
        self.r = jobs.r
        self._datasets: dict[str, list[DatasetFile]] = {}  # a finished batch's dataset never changes: a few cached

    # ----- records -------------------------------------------------------------------------------------------------
    def _save(self, rec: BatchRecord) -> None:
        self.r.set(redis_keys.batch(rec.id), rec.model_dump_json())

    def load(self, batch_id: str) -> BatchRecord | None:
        raw = self.r.get(redis_keys.batch(batch_id)) if isinstance(batch_id, str) and len(batch_id) < 80 else None
        return None if raw is None else BatchRecord.model_validate_json(raw)

    def get(self, tenant: str, batch_id: str) -> BatchRecord:
        rec = self.load(batch_id)
        if rec is None or rec.tenant != tenant:
            raise NotFound(f"no batch '{batch_id}'")
        return rec

    def update(self, batch_id: str, fn: Callable[[BatchRecord], BatchRecord | None]) -> BatchRecord | None:
        """Apply ``fn`` atomically (WATCH/MULTI): the planner's writes and a client's cancel never undo each other."""
        key = redis_keys.batch(batch_id)
        while True:
            with self.r.pipeline() as p:
                try:
                    p.watch(key)
                    raw = p.get(key)
                    rec = None if raw is None else fn(BatchRecord.model_validate_json(raw))
                    if rec is None:
                        p.unwatch()
                        return None
                    p.multi()
                    p.set(key, rec.model_dump_json())
                    p.execute()
                    return rec
                except redis.WatchError:
                    continue

    def counts(self, rec: BatchRecord) -> dict[str, int]:
        counts = cast(dict[bytes, bytes], self.r.hgetall(counts_key(rec.id)))
        raw = {k.decode(): int(v) for k, v in counts.items()}
        total = sum(rec.plan.values()) if rec.state == "planning" else len(rec.subjects)
        return {
            "total": total,
            "succeeded": raw.get("succeeded", 0),
            "failed": raw.get("failed", 0),
            "canceled": raw.get("canceled", 0),
        }

    @staticmethod
    def status(rec: BatchRecord, counts: dict[str, int]) -> str:
        if rec.state == "planning":
            return "canceling" if rec.cancel_requested else "planning"
        if rec.state == "failed":
            return "failed"
        done = counts["succeeded"] + counts["failed"] + counts["canceled"]
        if done < counts["total"]:
            return "canceling" if rec.cancel_requested else "running"
        if rec.cancel_requested:
            return "canceled"
        return "succeeded" if counts["succeeded"] == counts["total"] else "completed_with_errors"

    # ----- submission ----------------------------------------------------------------------------------------------
    def submit(self, tenant: str, req: BatchRequest, uploaded: list[bytes] | None = None) -> BatchRecord:
        """Check the request, store it in state ``planning`` and queue its planning; a worker makes the jobs."""
        entry = self.registry.get(req.model)
        unknown = sorted(set(req.class_counts) - set(entry.classes))
        if unknown:
            raise InvalidRequest.for_field(
                "class_counts", f"{unknown} are not classes of {entry.id}; it makes {list(entry.classes)}"
            )
        wanted = plan(req.class_counts, req.target, req.total_per_class)
        total = sum(wanted.values())
        if total == 0:
            raise InvalidRequest.for_field("class_counts", "the classes are already balanced: nothing to make")
        if total > MAX_BATCH_JOBS:
            raise InvalidRequest.for_field(
                "class_counts", f"{total} subjects planned, over the limit of {MAX_BATCH_JOBS} per batch; ask for fewer"
            )
        check_options(entry.options, req.options, entry.id)  # a 422 before anything is stored, as for a job
        if req.intensity and (
            why := scale_errors(entry.config, entry.id, req.intensity, req.modalities or entry.modalities)
        ):
            raise InvalidRequest.for_field("intensity", why)
        uploads = self._checked_uploads(req, uploaded) if needs_mask(entry) else []
        if needs_mask(entry) and req.masks == "bank" and self.masks is None:
            raise ServiceUnavailable("this service has no mask bank configured; upload masks with the batch")
        rec = BatchRecord(
            id=new_id("batch"),
            tenant=tenant,
            model=entry.id,
            request=req.model_dump(),
            plan=wanted,
            created_at=now(),
            state="planning",
        )
        rec.uploads = [batch_key(tenant, rec.id, f"upload-{k}.nii.gz") for k in range(len(uploads))]
        try:
            for key, raw in zip(rec.uploads, uploads, strict=True):
                with_retries(functools.partial(self.store.put_bytes, key, raw, "application/gzip"), attempts=4)
            self._save(rec)
            self.r.zadd(redis_keys.tenant_batches(tenant), {rec.id: round(rec.created_at * 1000)})
            self.r.zadd(PLANNING, {rec.id: rec.created_at})
            self.submissions.dispatcher.send_plan(rec.id, entry.family)
        except Exception as exc:
            self._undo(rec)
            log.exception("batch submission failed after validation")
            raise ServiceUnavailable(
                f"could not queue the batch ({type(exc).__name__}); nothing was kept, retry"
            ) from exc
        return rec

    def _checked_uploads(self, req: BatchRequest, uploaded: list[bytes] | None) -> list[bytes]:
        """Uploaded masks pass the job submission's checks here, so a bad one is a 422 now, not a failed batch."""
        if req.masks != "upload":
            return []
        if not uploaded:
            raise InvalidRequest.for_field("masks", "masks: upload needs file parts named 'mask'")
        for raw in uploaded:
            validate_mask(read_volume(raw, field="mask", limits=self.submissions.limits, labels=True), field="mask")
        return uploaded

    def _undo(self, rec: BatchRecord) -> None:
        for key in rec.uploads:
            try:
                self.store.delete(key)
            except Exception:
                log.warning("could not delete %s", key)
        try:
            self.r.delete(redis_keys.batch(rec.id))
            self.r.zrem(redis_keys.tenant_batches(rec.tenant), rec.id)
            self.r.zrem(PLANNING, rec.id)
        except Exception:
            log.warning("could not undo batch record %s", rec.id)

    # ----- cancel --------------------------------------------------------------------------------------------------
    def cancel(self, tenant: str, batch_id: str) -> BatchRecord:
        rec = self.get(tenant, batch_id)
        if self.status(rec, self.counts(rec)) in ("succeeded", "completed_with_errors", "canceled", "failed"):
            raise Conflict(f"batch {batch_id} has finished; nothing to cancel")

        def ask(fresh: BatchRecord) -> BatchRecord:
            fresh.cancel_requested = True  # a planner still at work sees it before its next job and stops
            return fresh

        rec = self.update(batch_id, ask) or rec
        self.cancel_jobs(rec)
        return rec

    def cancel_jobs(self, rec: BatchRecord) -> None:
        for s in rec.subjects:
            try:
                self.jobs.cancel(rec.tenant, s["job_id"])
            except Exception:  # already finished, or a Redis blip: the job finishes on its own and is counted
                log.debug("could not cancel %s", s["job_id"], exc_info=True)

    # ----- manifest ------------------------------------------------------------------------------------------------
    def ensure_manifest(self, rec: BatchRecord) -> BatchRecord:
        """Build the manifest once every job has finished (idempotent; one builder at a time)."""
        counts = self.counts(rec)
        if rec.manifest is not None or self.status(rec, counts) in ("running", "canceling", "planning", "failed"):
            return rec
        lock = self.r.lock(redis_keys.batch_manifest_lock(rec.id), timeout=120, blocking_timeout=60)
        if not lock.acquire():
            raise ServiceUnavailable("the manifest is being written; retry in a moment")
        try:
            fresh = self.get(rec.tenant, rec.id)
            if fresh.manifest is not None:
                return fresh
            rows = self.manifest_rows(fresh)
            keys = {
                "csv": batch_key(rec.tenant, rec.id, "manifest.csv"),
                "json": batch_key(rec.tenant, rec.id, "manifest.json"),
            }
            with_retries(lambda: self.store.put_bytes(keys["csv"], to_csv(rows), "text/csv"), attempts=4)
            with_retries(
                lambda: self.store.put_bytes(keys["json"], json.dumps(rows, indent=1).encode(), "application/json"),
                attempts=4,
            )
            fresh.manifest = keys
            self._save(fresh)
            return fresh
        finally:
            lock.release()

    def manifest_rows(self, rec: BatchRecord) -> list[dict]:
        entry = self.registry.get(rec.model)
        rows = []
        for s in rec.subjects:
            job = self.jobs.get(s["job_id"])
            if job is None or job.status != "succeeded":
                continue
            mask = next((o.key for o in job.outputs if o.kind == "mask"), "")
            sampler = job.request.get("sampler") or {}
            for o in job.outputs:
                if o.kind != "image":
                    continue
                rows.append(
                    {
                        "subject_id": s["subject_id"],
                        "class": s["class"],
                        "modality": o.modality,
                        "image": o.key,
                        "mask": mask,
                        "model": entry.id,
                        "checkpoint_sha256": entry.weights_sha256,
                        "sampler": sampler.get("name"),
                        "steps": sampler.get("steps"),
                        "seed": job.request.get("seed"),
                        "synthetic": True,
                        "intensity": job.request.get("intensity") or native_scale(entry.config)[0],
                    }
                )
        return add_bids_columns(rows, participant_labels(rec.subjects))

    def dataset(self, rec: BatchRecord) -> list[DatasetFile]:
        """The files of the finished batch's BIDS derivatives dataset (``NotFound`` while it runs)."""
        rec = self.ensure_manifest(rec)
        if rec.manifest is None:
            raise NotFound(f"batch {rec.id} is still running; its dataset exists when every job has finished")
        if rec.id not in self._datasets:
            rows = json.loads(self.store.get_bytes(rec.manifest["json"]))
            if rows and "bids_image" not in rows[0]:  # a manifest written before the BIDS columns existed
                rows = add_bids_columns(rows, participant_labels(rec.subjects))
            while len(self._datasets) >= 16:
                self._datasets.pop(next(iter(self._datasets)))
            self._datasets[rec.id] = dataset_files(rec.id, rows)
        return self._datasets[rec.id]


def needs_mask(entry) -> bool:
    return any(i.kind == "mask" and i.required for i in entry.inputs)


def to_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS))
    w.writeheader()
    for row in rows:
        w.writerow({k: ("true" if v is True else v) for k, v in row.items()})
    return buf.getvalue().encode()


def view(service: BatchService, rec: BatchRecord) -> dict:
    counts = service.counts(rec)
    out = {
        "id": rec.id,
        "model": rec.model,
        "status": service.status(rec, counts),
        "request": rec.request,
        "plan": rec.plan,
        "request_counts": counts,
        "created_at": rfc3339(rec.created_at),
        "error": rec.error,
        "jobs": [s["job_id"] for s in rec.subjects],
        "manifest": None,
        "dataset": None,
    }
    if rec.manifest:
        out["manifest"] = {"csv": f"/v1/batches/{rec.id}/manifest.csv", "json": f"/v1/batches/{rec.id}/manifest.json"}
        out["dataset"] = {"files": f"/v1/batches/{rec.id}/dataset", "zip": f"/v1/batches/{rec.id}/dataset.zip"}
    return out
