"""Threads in a worker's main process: presence (workers online), the reaper of lapsed leases, reconciliation.

Redis redelivers an unacked task only after the visibility timeout (hours); a job whose worker died is instead
noticed when its lease lapses (seconds) and requeued here, up to the attempt cap. A queued job whose broker message
was lost is re-sent by ``reconcile`` (every ``lease_seconds``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from ..jobs import fairness, keys
from ..jobs.connection import is_sentinel
from ..jobs.dispatch import Dispatcher
from . import inventory
from .context import WorkerContext
from .orphans import requeue_orphans
from .reconcile import reconcile_batches, reconcile_once

log = logging.getLogger(__name__)
WORKERS = keys.WORKERS
worker_key = keys.worker


def announce(ctx: WorkerContext, queues: list[str], has: dict | None = None) -> None:
    """The heartbeat record: who, which queues, and what it has (GPUs, models, versions: ``inventory``)."""
    s = ctx.settings
    info = {
        "id": ctx.worker_id,
        "queues": queues,
        "device": s.device,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "seen_at": time.time(),
    } | (has or {})
    with ctx.redis.pipeline() as p:
        p.set(worker_key(ctx.worker_id), json.dumps(info), ex=max(5, int(s.lease_seconds)))
        p.zadd(WORKERS, {ctx.worker_id: time.time()})
        p.execute()


def reap_once(ctx: WorkerContext, dispatcher: Dispatcher) -> list[str]:
    requeued = []
    for job_id in ctx.jobs.lapsed():
        rec = ctx.jobs.release_lapsed(job_id, ctx.settings.max_attempts)
        if rec is None:
            continue
        log.warning("job %s: lease lapsed (attempt %d) → %s", job_id, rec.attempts, rec.status)
        if rec.status == "queued":
            # where it was queued first, at its tenant's level
            dispatcher.send(rec.id, rec.family, rec.queue, priority=fairness.priority(ctx.redis, rec.tenant))
            requeued.append(rec.id)
    return requeued


def start_parent_services(ctx: WorkerContext, dispatcher: Dispatcher, queues: list[str]) -> threading.Thread:
    interval = ctx.settings.reaper_interval_seconds
    last_reconcile = 0.0
    # Behind Sentinel only: jobs whose message a failover stranded in kombu's unacked hash (reconcile counts those
    # as held by a worker, and kombu gives them back only after the visibility timeout: hours).
    orphan_after = max(30.0, 3 * ctx.settings.lease_seconds) if is_sentinel(ctx.settings.redis_url) else None
    next_orphan_sweep = time.monotonic() + (orphan_after or 0.0) / 2
    has = {"gpus": inventory.gpus(), "models": inventory.models(ctx.registry), "versions": inventory.versions()}

    def loop() -> None:
        nonlocal last_reconcile, next_orphan_sweep
        while True:
            try:
                announce(ctx, queues, has)
                reap_once(ctx, dispatcher)
                if time.monotonic() - last_reconcile >= ctx.settings.lease_seconds:
                    last_reconcile = time.monotonic()
                    reconcile_once(ctx, dispatcher, queues)
                    reconcile_batches(ctx, dispatcher, queues)
                if orphan_after is not None and time.monotonic() >= next_orphan_sweep:
                    next_orphan_sweep = time.monotonic() + orphan_after / 2
                    requeue_orphans(ctx, dispatcher, orphan_after, queues)
            except Exception:
                log.warning("worker supervision loop failed; retrying", exc_info=True)
            time.sleep(interval)

    t = threading.Thread(target=loop, name="tumorsynth-supervision", daemon=True)
    t.start()
    return t
