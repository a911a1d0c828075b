"""Planning a batch, in a worker: make each class's masks, submit one job per subject, record them on the batch.

The API stored the batch in state ``planning`` and queued ``plan_batch`` (issue 14, #10: bank masks take ~2.3 s per
subject, 28 s for 12, which a request cannot wait for). Here:

* every subject's job is recorded on the batch as soon as it is submitted (an atomic update, so a client's cancel
  in between is kept); a planner redelivered after its worker died resumes after the subjects already made;
* a cancel stops the planning before the next job, and the jobs made are canceled with the batch;
* a batch that cannot be planned (bank masks that cannot be placed, an uploaded mask gone from storage, a bug)
  ends ``failed`` with an error a person can act on, and the jobs made so far are canceled; never a 500;
* planning tasks started are counted on the batch: one that kills its worker each time (Celery redelivers it, as
  ``reject_on_worker_lost`` asks) ends the batch ``failed`` after ``max_attempts``, as a job's attempts do.
"""

from __future__ import annotations

import functools
import json
import logging

from ..errors import InvalidRequest, TumorsynthError
from ..storage.retry import with_retries
from .batches import PLANNING, BatchRecord, BatchRequest, BatchService, needs_mask

log = logging.getLogger(__name__)


class PlanningFailed(TumorsynthError):
    code = "planning_failed"


class BatchPlanner:
    def __init__(self, batches: BatchService, max_attempts: int = 3):
        self.batches, self.max_attempts = batches, max_attempts

    def plan(self, batch_id: str) -> str:
        """Plan the batch once; a batch already planned, failed or gone is left as it is (a redelivered task)."""

        def start(fresh: BatchRecord) -> BatchRecord | None:
            if fresh.state != "planning":
                return None
            fresh.plan_attempts += 1
            return fresh

        rec = self.batches.update(batch_id, start)
        if rec is None:
            return "not planning"
        try:
            if rec.plan_attempts > self.max_attempts:
                raise PlanningFailed(
                    f"planning stopped its worker {rec.plan_attempts - 1} times (killed, out of "
                    "memory); ask for fewer subjects, or contact the operators"
                )
            outcome = self._plan(rec)
        except TumorsynthError as exc:
            outcome = self._fail(rec, exc.message)
        except Exception as exc:  # a bug or a library failure: the batch fails with a code, the worker lives on
            log.exception("batch %s: planning failed", batch_id)
            outcome = self._fail(rec, f"{type(exc).__name__}: {exc}")
        self._drop_uploads(rec)
        return outcome

    def _plan(self, rec: BatchRecord) -> str:
        req = BatchRequest.model_validate(rec.request)
        entry = self.batches.registry.get(rec.model)
        made, i = len(rec.subjects), 0
        for cls, n in rec.plan.items():
            if n == 0 or i + n <= made:  # none wanted, or made before a redelivery
                i += n
                continue
            masks = self._masks(rec, req, cls, n) if needs_mask(entry) else [None] * n
            for k in range(n):
                if i >= made:
                    if self._canceled(rec.id):
                        return self._finish(rec.id, "canceled")
                    self._submit(rec, req, entry.id, cls, k, i, masks[k])
                i += 1
        return self._finish(rec.id, "planned")

    def _submit(
        self, rec: BatchRecord, req: BatchRequest, model: str, cls: str, k: int, i: int, mask: bytes | None
    ) -> None:
        seed = req.seed * 100003 + i
        body = {"model": model, "num_samples": 1, "seed": seed, "tumor_class": cls}
        if req.modalities:
            body["modalities"] = req.modalities
        if req.sampler:
            body["sampler"] = req.sampler
        if req.options:
            body["options"] = req.options
        if req.intensity:
            body["intensity"] = req.intensity
        files = {"mask": mask} if mask is not None else {}
        sub = self.batches.submissions.submit(rec.tenant, json.dumps(body), files, batch_id=rec.id)
        subject = {"subject_id": f"{rec.id}-{cls}-{k:04d}", "class": cls, "job_id": sub.record.id, "seed": seed}

        def add(fresh: BatchRecord) -> BatchRecord:
            fresh.subjects.append(subject)
            return fresh

        self.batches.update(rec.id, add)

    def _masks(self, rec: BatchRecord, req: BatchRequest, cls: str, n: int) -> list[bytes]:
        if req.masks == "upload":
            uploads = [
                with_retries(functools.partial(self.batches.store.get_bytes, key), attempts=4) for key in rec.uploads
            ]
            if not uploads:
                raise PlanningFailed("the masks uploaded with the batch are gone from storage; submit it again")
            return [uploads[k % len(uploads)] for k in range(n)]
        if self.batches.masks is None:
            raise PlanningFailed("this service has no mask bank configured; upload masks with the batch")
        try:
            return self.batches.masks(rec.tenant, cls, n, req.seed)
        except ValueError as exc:  # the bank's masks of this class cannot be placed in the template brain
            raise InvalidRequest.for_field(
                "masks",
                f"class {cls}: no bank mask of this class could be placed ({exc}); list the bank with "
                "GET /v1/masks and delete the masks that are too large, or upload masks with the batch",
            ) from exc

    def _canceled(self, batch_id: str) -> bool:
        rec = self.batches.load(batch_id)
        return rec is None or rec.cancel_requested

    def _finish(self, batch_id: str, outcome: str) -> str:
        def done(fresh: BatchRecord) -> BatchRecord:
            fresh.state = "planned"
            return fresh

        rec = self.batches.update(batch_id, done)
        self.batches.r.zrem(PLANNING, batch_id)
        if rec is not None and rec.cancel_requested:
            self.batches.cancel_jobs(rec)  # jobs made after the client's cancel had read the subjects
        return outcome

    def _fail(self, rec: BatchRecord, message: str) -> str:
        def failed(fresh: BatchRecord) -> BatchRecord:
            fresh.state = "failed"
            fresh.error = {"code": "planning_failed", "message": f"the batch could not be planned: {message}"}
            return fresh

        fresh = self.batches.update(rec.id, failed)
        self.batches.r.zrem(PLANNING, rec.id)
        if fresh is not None:
            self.batches.cancel_jobs(fresh)
        log.warning("batch %s: planning failed: %s", rec.id, message)
        return "failed"

    def _drop_uploads(self, rec: BatchRecord) -> None:
        """Each job keeps its own copy of its mask; the batch's copies are not needed once planning ended."""
        for key in rec.uploads:
            try:
                self.batches.store.delete(key)
            except Exception:
                log.warning("could not delete %s; it expires with the inputs", key)
