"""Submitting and reading jobs, independent of HTTP: validate everything, store inputs, write the record, queue.

Order matters: nothing is stored before every check passed, and nothing is queued before the record exists.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..errors import IdempotencyInProgress, InvalidUpload, ServiceUnavailable
from ..imaging.labels import validate_mask
from ..imaging.nifti import Volume, VolumeLimits, read_volume
from ..models.registry import ModelRegistry
from ..settings import Settings
from ..storage.base import ObjectStore
from ..storage.keys import input_key
from ..storage.retry import with_retries
from ..webhooks.targets import check_request as check_webhook
from . import fairness
from .connection import wait_for_replicas
from .dispatch import Dispatcher
from .memory import check_output_memory, output_shape
from .records import JobRecord, StoredInput, new_id
from .store import JobStore
from .validation import (
    check_against_model,
    check_files,
    delivery_errors,
    normalised,
    parse_request,
    raise_if,
)

log = logging.getLogger(__name__)
IDEMPOTENCY_CLAIM_SECONDS = 300  # an unconfirmed claim (its submitter died mid-way) frees the key after this
UNDO_RETRY_SECONDS = 120  # a refused submission's record is deleted once the store is back (before orphans are resent)
IDEMPOTENCY_WAIT_SECONDS = 30  # how long a concurrent request with the same key waits for the first one's job


class NotReplicated(Exception):
    """WAIT answered fewer replicas than required: the job might not survive a failover."""


@dataclass
class Submission:
    record: JobRecord
    replayed: bool  # an Idempotency-Key matched an earlier identical request


def read_inputs(
    files: dict[str, bytes], limits: VolumeLimits, masks: frozenset[str] = frozenset()
) -> dict[str, Volume]:
    """Every file through the safe reader (``masks``: the names read as uint8 labels); co-registered files must share
    shape and affine."""
    vols = {name: read_volume(raw, field=name, limits=limits, labels=name in masks) for name, raw in files.items()}
    reference = None
    for name, vol in vols.items():
        if reference is None:
            reference = (name, vol)
            continue
        ref_name, ref = reference
        if vol.shape != ref.shape:
            raise InvalidUpload.for_field(
                name,
                f"shape {list(vol.shape)} differs from {ref_name}'s {list(ref.shape)}; upload co-registered "
                "volumes on the same grid",
            )
        if not np.allclose(vol.affine, ref.affine, atol=1e-3):
            raise InvalidUpload.for_field(
                name, f"affine differs from {ref_name}'s; upload co-registered volumes with the same affine"
            )
    return vols


class JobService:
    def __init__(
        self, jobs: JobStore, store: ObjectStore, registry: ModelRegistry, dispatcher: Dispatcher, settings: Settings
    ):
        self.jobs, self.store, self.registry, self.dispatcher = jobs, store, registry, dispatcher
        self.settings, self.limits = settings, VolumeLimits.from_settings(settings)
        self.retries, self.idem_ttl = settings.storage_retries, settings.idempotency_ttl_seconds

    def submit(
        self,
        tenant: str,
        request_json: str | bytes | None,
        files: dict[str, bytes],
        idempotency_key: str | None = None,
        batch_id: str | None = None,
    ) -> Submission:
        req = parse_request(request_json)
        entry = self.registry.get(req.model)
        raise_if(
            check_against_model(req, entry)
            + check_files(sorted(files), entry)
            + check_webhook(req, tenant, self.settings)
            + delivery_errors(req, tenant, self.settings)
        )
        vols = read_inputs(files, self.limits, frozenset(i.name for i in entry.inputs if i.kind == "mask"))
        check_output_memory(
            output_shape([v.shape for v in vols.values()], req.output_grid, entry.output_shape),
            len(req.modalities or entry.modalities),
            req.num_samples,
            self.settings.max_job_output_bytes,
        )
        inputs: list[StoredInput] = []
        job_id = new_id("job")
        for name, vol in vols.items():
            spec = entry.input(name)
            info = validate_mask(vol, field=name) if spec and spec.kind == "mask" else None
            suffix = ".nii.gz" if vol.compressed else ".nii"
            inputs.append(
                StoredInput(
                    name=name,
                    key=input_key(tenant, job_id, name + suffix),
                    sha256=vol.sha256,
                    size=vol.size,
                    shape=list(vol.shape),
                    spacing=[float(s) for s in vol.spacing],
                    compressed=vol.compressed,
                    label_convention=info.convention if info else None,
                    labels=info.labels if info else None,
                )
            )
        body_sha = hashlib.sha256(
            json.dumps(
                {"request": req.model_dump(mode="json"), "files": {i.name: i.sha256 for i in inputs}}, sort_keys=True
            ).encode()
        ).hexdigest()
        if idempotency_key is not None:
            earlier = self._claim_key(tenant, idempotency_key, body_sha, job_id)
            if earlier is not None:
                return Submission(earlier, replayed=True)
        rec = JobRecord(
            id=job_id,
            tenant=tenant,
            model=entry.id,
            family=entry.family,
            queue=self.settings.queue_for(entry.family),
            request=normalised(req, entry),
            inputs=inputs,
            idempotency_key=idempotency_key,
            body_sha256=body_sha,
            batch_id=batch_id,
        )
        if batch_id is None:  # a batch's jobs are bounded by the batch limit, and queue behind the tenant's others
            self._check_caps(tenant, rec, idempotency_key)
        try:
            self._store_inputs(inputs, files)
            self.jobs.create(rec)
            self.dispatcher.send(rec.id, rec.family, priority=fairness.priority(self.jobs.r, tenant))
            if idempotency_key is not None:
                self.jobs.confirm_idempotency(tenant, idempotency_key, body_sha, job_id, self.idem_ttl)
            self._on_replicas(rec.id)
        except NotReplicated as exc:
            self._undo(tenant, rec, idempotency_key)
            raise ServiceUnavailable(str(exc)) from exc
        except Exception as exc:
            self._undo(tenant, rec, idempotency_key)
            log.exception("job submission failed after validation")
            raise ServiceUnavailable(
                f"could not queue the job ({type(exc).__name__}); nothing was kept, retry"
            ) from exc
        return Submission(rec, replayed=False)

    def _on_replicas(self, job_id: str) -> None:
        """Acknowledge only what a failover cannot lose: the record, its queue message and its idempotency key on
        ``ack_replicas`` replicas (Redis WAIT), or undo the submission and answer 503."""
        s = self.settings
        wanted = s.ack_replicas
        timeout = min(s.redis_ack_timeout_seconds, 0.8 * s.redis_timeout_seconds)  # WAIT ends before the socket does
        if wanted and wait_for_replicas(self.jobs.r, wanted, timeout) < wanted:
            log.warning(
                "job %s: not on %d replica(s) within %.1f s; undone, 503", job_id, wanted, s.redis_ack_timeout_seconds
            )
            raise NotReplicated(
                f"the job store could not copy the job to {wanted} replica(s) within {s.redis_ack_timeout_seconds} "
                "s (a failover or a lagging replica); nothing was kept, retry after the Retry-After seconds"
            )

    def _check_caps(self, tenant: str, rec: JobRecord, idempotency_key: str | None) -> None:
        s = self.settings
        try:
            fairness.check_caps(
                self.jobs.r, tenant, fairness.work_of(rec), s.max_active_jobs_per_tenant, s.max_active_work_per_tenant
            )
        except fairness.TenantBusy:
            if idempotency_key is not None:
                self.jobs.release_idempotency(tenant, idempotency_key)
            raise

    def _claim_key(self, tenant: str, key: str, body_sha: str, job_id: str) -> JobRecord | None:
        """None once this request owns the key; else the job of the request that does, after waiting for it.

        Concurrent requests with one key all get here; one ``SET NX`` picks the owner. The others wait until its
        job is created and queued (then replay it) or its submission failed and freed the key (then claim it).
        """
        deadline = time.monotonic() + IDEMPOTENCY_WAIT_SECONDS
        while True:
            bound = self.jobs.reserve_idempotency(tenant, key, body_sha, job_id, IDEMPOTENCY_CLAIM_SECONDS)
            if bound is None:
                return None
            rec = None if bound.pending else self.jobs.get(bound.job_id)
            if rec is not None:
                return rec
            if time.monotonic() > deadline:
                raise IdempotencyInProgress(
                    "a request with this Idempotency-Key is still being processed; retry it in a moment"
                )
            time.sleep(0.05)

    def _store_inputs(self, inputs: list[StoredInput], files: dict[str, bytes]) -> None:
        for item in inputs:
            kind = "application/gzip" if item.compressed else "application/octet-stream"
            with_retries(
                functools.partial(self.store.put_bytes, item.key, files[item.name], kind), attempts=self.retries
            )

    def _undo(self, tenant: str, rec: JobRecord, idempotency_key: str | None) -> None:
        for item in rec.inputs:
            try:
                self.store.delete(item.key)
            except Exception:
                log.warning("could not delete %s", item.key)
        try:
            self._forget(tenant, rec, idempotency_key)
        except Exception:
            # The job store went away mid-submission (a failover): the record may survive on a replica and be run
            # although the client was told 503. Keep trying in the background until the store answers again.
            log.warning("could not undo job record %s yet; retrying in the background", rec.id)
            threading.Thread(
                target=self._forget_later, args=(tenant, rec, idempotency_key), daemon=True, name=f"undo-{rec.id}"
            ).start()

    def _forget(self, tenant: str, rec: JobRecord, idempotency_key: str | None) -> None:
        self.jobs.delete(rec)
        if idempotency_key:
            self.jobs.release_idempotency(tenant, idempotency_key)

    def _forget_later(self, tenant: str, rec: JobRecord, idempotency_key: str | None) -> None:
        deadline = time.monotonic() + UNDO_RETRY_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                self._forget(tenant, rec, idempotency_key)
                log.warning("job record %s undone after the job store came back", rec.id)
                return
            except Exception:
                continue
        log.error(
            "job record %s could not be undone in %d s: it may run although its client got a 503",
            rec.id,
            UNDO_RETRY_SECONDS,
        )
