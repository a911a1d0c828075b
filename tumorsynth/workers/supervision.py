"""Threads in a worker's main process: presence (workers online) and the reaper of lapsed leases.

Redis redelivers an unacked task only after the visibility timeout (hours); a job whose worker died is instead
noticed when its lease lapses (seconds) and requeued here, up to the attempt cap.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from ..jobs import keys
from ..jobs.dispatch import Dispatcher
from . import inventory
from .context import WorkerContext
from .orphans import requeue_orphans

log = logging.getLogger(__name__)
WORKERS = keys.WORKERS
worker_key = keys.worker


def announce(ctx: WorkerContext, queues: list[str], has: dict | None = None) -> None:
    """The heartbeat record: who, which queues, and what it has (GPUs, models, versions: ``inventory``)."""
    s = ctx.settings
    info = {"id": ctx.worker_id, "queues": queues, "device": s.device, "pid": os.getpid(), "host": socket.gethostname(),
            "seen_at": time.time()} | (has or {})
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
            dispatcher.send(rec.id, rec.family, rec.queue)  # where it was queued first
            requeued.append(rec.id)
    return requeued


def start_parent_services(ctx: WorkerContext, dispatcher: Dispatcher, queues: list[str]) -> threading.Thread:
    interval = ctx.settings.reaper_interval_seconds
    orphan_after = max(30.0, 3 * ctx.settings.lease_seconds)  # far beyond a BRPOP→unacked hand-over
    next_orphan_sweep = time.monotonic() + orphan_after / 2

    has = {"gpus": inventory.gpus(), "models": inventory.models(ctx.registry), "versions": inventory.versions()}

    def loop() -> None:
        nonlocal next_orphan_sweep
        while True:
            try:
                announce(ctx, queues, has)
                reap_once(ctx, dispatcher)
                if time.monotonic() >= next_orphan_sweep:
                    next_orphan_sweep = time.monotonic() + orphan_after / 2
                    requeue_orphans(ctx, dispatcher, orphan_after, queues)
            except Exception:
                log.warning("worker supervision loop failed; retrying", exc_info=True)
            time.sleep(interval)

    t = threading.Thread(target=loop, name="tumorsynth-supervision", daemon=True)
    t.start()
    return t
