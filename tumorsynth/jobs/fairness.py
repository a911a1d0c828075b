"""Per-tenant fairness: how much work each tenant has outstanding, the caps on it, and its queue priority.

One worker serves every tenant, so without this a tenant that submits 50 jobs (or one 64-sample DDPM-1000 job after
another) makes every other tenant wait for all of them. Two measures (issue 14, #12):

* a cap on a tenant's outstanding (queued or running) jobs and work, samples × steps, beyond which a direct
  submission is a 429 with ``Retry-After``; batch jobs are bounded by the batch limit instead and are not capped;
* a queue order that interleaves tenants: a job is queued at priority level min(n, 9), n the tenant's jobs already
  outstanding, and the worker pops level 0 first. Another tenant's first job (level 0) thus waits for at most the
  job that is running and the flooding tenant's single level-0 job, not for its whole backlog.

The counters live in one Redis hash per tenant and change in the same transaction as the job transitions
(``stats.record_transition``), so they cannot drift from the records.
"""

from __future__ import annotations

from ..errors import TumorsynthError
from ..schemas import TERMINAL
from . import keys

LOWEST = 9  # the last of the queue's priority levels (workers.celery_app.PRIORITY_STEPS)


def load_key(tenant: str) -> str:
    return keys.tenant_load(tenant)  # hash: jobs, work (samples × steps) of the tenant's queued and running jobs


def work_of(rec) -> int:
    req = rec.request
    return int(req.get("num_samples", 1)) * int((req.get("sampler") or {}).get("steps") or 1)


def _active(status: str | None) -> bool:
    return status is not None and status not in TERMINAL


def record_transition(pipe, before: str | None, rec) -> None:
    """Inside the transition's MULTI: a job entering or leaving the outstanding set moves the tenant's counters."""
    delta = int(_active(rec.status)) - int(_active(before))
    if delta:
        pipe.hincrby(load_key(rec.tenant), "jobs", delta)
        pipe.hincrby(load_key(rec.tenant), "work", delta * work_of(rec))


def record_deletion(pipe, rec) -> None:
    record_transition(pipe, rec.status, rec.model_copy(update={"status": "canceled"}))


def outstanding(r, tenant: str) -> tuple[int, int]:
    """(jobs, work) the tenant has queued or running now. Jobs queued before these counters existed (an upgrade)
    were never counted in, so their ends can take a counter below zero: read as zero."""
    raw = r.hmget(load_key(tenant), ["jobs", "work"])
    return max(0, int(raw[0] or 0)), max(0, int(raw[1] or 0))


def priority(r, tenant: str) -> int:
    """The level for a job of ``tenant`` that is already counted: its jobs ahead of it, up to the lowest level."""
    jobs, _ = outstanding(r, tenant)
    return max(0, min(jobs - 1, LOWEST))


class TenantBusy(TumorsynthError):
    """The tenant already has as much queued and running work as one tenant may."""

    status = 429
    code = "tenant_busy"
    title = "Too much outstanding work"
    retry_after = 30


def check_caps(r, tenant: str, work: int, max_jobs: int, max_work: int) -> None:
    """429 when one more job of ``work`` would take the tenant over a cap (checked before anything is stored).

    A check, not a reservation: concurrent submissions can overshoot a cap by the number of requests in flight.
    """
    jobs, queued_work = outstanding(r, tenant)
    if jobs + 1 > max_jobs:
        raise TenantBusy(
            f"you have {jobs} jobs queued or running, the most one tenant may have; wait for some to "
            "finish (or cancel them) and submit again"
        )
    if queued_work + work > max_work:
        raise TenantBusy(
            f"this job's {work} sample-steps (num_samples × steps) with the {queued_work} you have "
            f"queued or running exceed the {max_work} one tenant may have; wait for jobs to finish, or "
            "ask for fewer samples or steps"
        )
