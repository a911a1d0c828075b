"""The PACS delivery loop: runs in every worker's main process beside the webhook loop, off the job path.

An attempt reads the job's ``dicom.zip`` from the object store and stores every instance at the tenant's
destination. A failed attempt is retried with exponential backoff until ``pacs_max_attempts``; then the delivery is
``failed``. Either way the job stays ``succeeded`` with its outputs: a PACS problem never fails or loses a job.
The job record carries the outcome (``delivery``), the outbox the working copy.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import zipfile

from ..jobs.records import rfc3339
from ..jobs.store import JobStore
from ..storage.retry import with_retries
from ..webhooks.claim_loop import run_claim_loop
from .outbox import PacsOutbox
from .send import DeliveryError, send

log = logging.getLogger(__name__)
PARALLEL = 2  # deliveries in flight per worker: each holds one association and one archive in memory


def backoff(settings, attempts: int) -> float:
    return min(settings.pacs_backoff_seconds * 2 ** (attempts - 1), settings.pacs_backoff_max_seconds)


def summary(d: dict) -> dict:
    """What the job shows (``Job.delivery``)."""
    return {
        "target": d["target"],
        "destination": d["destination"],
        "state": d["state"],
        "attempts": d["attempts"],
        "instances": d["instances"],
        "last_error": d["last_error"],
        "delivered_at": rfc3339(d["delivered_at"]),
        "next_attempt_at": rfc3339(d["next_attempt_at"]) if d["state"] == "pending" else None,
    }


class PacsDeliverer:
    def __init__(self, r, store, settings):
        self.settings, self.store = settings, store
        self.outbox, self.jobs = PacsOutbox(r), JobStore(r)

    @property
    def claim_seconds(self) -> float:
        return 4 * self.settings.pacs_timeout_seconds + 60

    def attempt(self, d: dict) -> dict:
        s = self.settings
        d["attempts"] += 1
        d["last_attempt_at"] = time.time()
        dest = s.pacs_destinations.get(d["tenant"])
        try:
            if dest is None:
                raise DeliveryError(f"tenant {d['tenant']!r} has no PACS destination configured any more")
            d["destination"] = dest.describe()
            with tempfile.TemporaryFile() as tmp:
                self._download(d["job_id"], tmp)
                with zipfile.ZipFile(tmp) as archive:
                    d["instances"] = send(dest, archive, s.pacs_timeout_seconds)
            d.update(state="delivered", delivered_at=time.time(), last_error=None)
            outcome = "ok"
        except Exception as exc:  # DeliveryError, or the archive out of reach: both retried
            outcome = "error"
            d["last_error"] = (str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}")[:500]
            if d["attempts"] >= s.pacs_max_attempts or dest is None:
                d["state"] = "failed"
                log.warning(
                    "PACS delivery of job %s failed after %d attempts: %s", d["job_id"], d["attempts"], d["last_error"]
                )
            else:
                d["next_attempt_at"] = time.time() + backoff(s, d["attempts"])
        self.outbox.save(d, outcome)
        self._show(d)
        return d

    def _download(self, job_id: str, file) -> None:
        """The job's ``dicom.zip`` into ``file`` (on disk: a large job's archive runs to gigabytes)."""
        rec = self.jobs.get(job_id)
        out = None if rec is None else next((o for o in rec.outputs if o.kind == "dicom"), None)
        if out is None:
            raise DeliveryError(f"job {job_id} has no DICOM output any more (deleted?)")

        def fetch() -> None:
            file.seek(0)
            file.truncate()
            for chunk in self.store.iter_chunks(out.key):
                file.write(chunk)

        with_retries(fetch, attempts=self.settings.storage_retries)
        file.seek(0)

    def _show(self, d: dict) -> None:
        view = summary(d)

        def put(rec):
            rec.delivery = view
            return rec

        self.jobs.update(d["job_id"], put)

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Claim due deliveries as pool threads free up (``webhooks.claim_loop``)."""
        run_claim_loop(
            lambda limit: self.outbox.claim_due(self.claim_seconds, limit=limit),
            self.attempt,
            PARALLEL,
            self.settings.webhook_poll_seconds,
            "pacs",
            stop,
        )


def start_pacs_deliverer(r, store, settings) -> threading.Thread:
    t = threading.Thread(target=PacsDeliverer(r, store, settings).run_forever, name="tumorsynth-pacs", daemon=True)
    t.start()
    return t
