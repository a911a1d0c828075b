"""Reconciliation of the job store with the broker: a job ``queued`` in the store whose message is on no queue.

A job's message can be lost while its record says ``queued``: a split brain (two Redis servers on one append-only
file, issue 14 #4/#11), a broker restored from an older snapshot, a list deleted by hand. Leases cover jobs that
started; nothing covered these, and they stayed queued for good.

So the reaper, every ``lease_seconds``, takes the jobs queued for longer than that (the store's per-queue index),
looks for their ids in the broker's lists (every priority level) and in kombu's ``unacked`` hash (messages a worker
holds), and re-sends those found nowhere — counted per job id (``JobRecord.resends``, capped by ``max_attempts``;
beyond the cap the job fails as ``lost_in_queue``). A re-sent job that had a message after all (taken by a worker
between the two looks) runs once: ``JobStore.claim`` lets one message own it and the other finds it taken.

Batches waiting in ``planning`` are reconciled the same way: their ``plan_batch`` message is looked for by batch id
and sent again if lost (``BatchRecord.resends``, same cap; the planner skips a batch already planned).
"""

from __future__ import annotations

import logging
import re
import time
from typing import cast

from ..jobs import fairness, stats
from ..jobs.batches import PLANNING, BatchRecord, BatchService
from ..jobs.dispatch import Dispatcher
from .celery_app import queue_lists
from .context import WorkerContext

log = logging.getLogger(__name__)
JOB_ID = re.compile(rb"job_[0-9a-f]{32}")
BATCH_ID = re.compile(rb"batch_[0-9a-f]{32}")
UNACKED = "unacked"  # kombu's Redis transport: delivery tag → [message, exchange, routing key]
SECOND_LOOK_SECONDS = 0.5  # a message between a worker's BRPOP and its unacked entry is seen on the second look


def broker_job_ids(r, queue: str, pattern: re.Pattern = JOB_ID) -> set[str]:
    """Ids of the jobs (or of what ``pattern`` matches) that have a message on ``queue``'s lists or held
    unacknowledged by some worker."""
    ids: set[str] = set()
    with r.pipeline(transaction=False) as p:
        for name in queue_lists(queue):
            p.lrange(name, 0, -1)
        p.hvals(UNACKED)
        for messages in p.execute():
            for raw in messages:
                ids.update(m.decode() for m in pattern.findall(raw))
    return ids


def lost_jobs(r, queue: str, queued_before: float) -> list[str]:
    """Jobs queued since before ``queued_before`` with no message anywhere, on two looks half a second apart."""
    waiting = {j.decode() for j in r.zrangebyscore(stats.queued_key(queue), "-inf", queued_before)}
    return missing_from_broker(r, queue, waiting, JOB_ID)


def missing_from_broker(r, queue: str, ids: set[str], pattern: re.Pattern) -> list[str]:
    if not ids:
        return []
    missing = ids - broker_job_ids(r, queue, pattern)
    if missing:
        time.sleep(SECOND_LOOK_SECONDS)
        missing -= broker_job_ids(r, queue, pattern)
    return sorted(missing)


def reconcile_batches(ctx: WorkerContext, dispatcher: Dispatcher, queues: list[str]) -> list[str]:
    """Send again the planning of every batch of ``queues`` still ``planning`` whose task is on no queue."""
    s, r = ctx.settings, ctx.redis
    horizon = time.time() - s.lease_seconds
    batches = BatchService(ctx.jobs, None, ctx.store, ctx.registry)
    waiting: dict[str, set[str]] = {}
    planning = cast(list[bytes], r.zrangebyscore(PLANNING, "-inf", horizon))
    for raw_id in planning:
        rec = batches.load(raw_id.decode())
        if rec is None or rec.state != "planning":
            r.zrem(PLANNING, raw_id)
            continue
        waiting.setdefault(s.queue_for(rec.model.split("/")[0]), set()).add(rec.id)
    resent = []
    for queue in queues:
        for batch_id in missing_from_broker(r, queue, waiting.get(queue, set()), BATCH_ID):
            rec = batches.update(batch_id, lambda b: _count_resend(b, s.max_attempts))
            if rec is None:
                continue
            if rec.state != "planning":
                r.zrem(PLANNING, batch_id)
                batches.cancel_jobs(rec)
                continue
            r.zadd(PLANNING, {batch_id: time.time()})  # the next look waits out the grace again
            log.warning("batch %s: planning but on no broker queue; sent again (%d)", batch_id, rec.resends)
            dispatcher.send_plan(batch_id, rec.model.split("/")[0])
            resent.append(batch_id)
    return resent


def _count_resend(rec: BatchRecord, max_resends: int) -> BatchRecord | None:
    if rec.state != "planning":
        return None
    if rec.resends >= max_resends:
        rec.state = "failed"
        rec.error = {
            "code": "lost_in_queue",
            "message": f"the batch's planning task was lost {rec.resends} times "
            "(broker failures); submit the batch again",
        }
    else:
        rec.resends += 1
    return rec


def reconcile_once(ctx: WorkerContext, dispatcher: Dispatcher, queues: list[str]) -> list[str]:
    """Re-send every lost job of ``queues``; returns their ids."""
    s = ctx.settings
    horizon = time.time() - s.lease_seconds
    resent = []
    for queue in queues:
        for job_id in lost_jobs(ctx.redis, queue, horizon):
            rec = ctx.jobs.mark_resent(job_id, horizon, s.max_attempts)
            if rec is None:
                continue
            if rec.status != "queued":
                log.warning("job %s: queue message lost %d times → %s", job_id, rec.resends, rec.status)
                continue
            log.warning("job %s: queued but on no broker queue; sent again (%d)", job_id, rec.resends)
            dispatcher.send(rec.id, rec.family, rec.queue, priority=fairness.priority(ctx.redis, rec.tenant))
            resent.append(job_id)
    return resent
