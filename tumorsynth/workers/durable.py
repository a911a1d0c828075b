"""A job's end written so that a Redis failover cannot undo it.

Behind Sentinel, a write acknowledged by the primary can still be lost if the primary dies before its replica has
it; a lost ``succeeded`` would leave the job ``running`` until its lease lapses, and then run it a second time.
So the worker waits (``WAIT``) until a replica holds the end of the job, and while it does not, it reads the job
again from whichever primary answers and writes the end again (the lease token fences it, as every worker write).
With one Redis (no replicas to wait for) this is exactly ``JobStore.finish``.
"""

from __future__ import annotations

import logging
import time

import redis

from ..jobs.connection import wait_for_replicas
from ..jobs.records import JobRecord
from .context import WorkerContext

log = logging.getLogger(__name__)


def finish(ctx: WorkerContext, job_id: str, token: int, status: str, **fields) -> JobRecord:
    s = ctx.settings
    wanted = s.ack_replicas
    if not wanted:
        return ctx.jobs.finish(job_id, token, status, **fields)
    deadline = time.monotonic() + s.lease_seconds  # the heartbeat keeps the lease alive meanwhile
    rec = None
    while True:
        try:
            rec = ctx.jobs.get(job_id)
            if rec is None or not (rec.status == status and rec.attempts == token):
                rec = ctx.jobs.finish(job_id, token, status, **fields)  # LeaseLost if another attempt owns it
            if wait_for_replicas(ctx.redis, wanted, s.redis_ack_timeout_seconds) >= wanted:
                return rec
            log.warning("job %s: its end (%s) is not on %d replica(s) yet; checking again", job_id, status, wanted)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning(
                "job %s: job store unreachable while ending attempt %d (%s); retrying",
                job_id,
                token,
                type(exc).__name__,
            )
        if time.monotonic() > deadline and rec is not None:
            log.warning(
                "job %s: its end is on the primary only (no replica acknowledged in %.0f s)", job_id, s.lease_seconds
            )
            return rec
        time.sleep(0.2)
