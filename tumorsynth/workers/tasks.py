"""Celery tasks: thin, they take a job id. Everything else is in pipeline.py."""

from __future__ import annotations

import logging
import threading

from celery import signals

from ..jobs.outbox import Outbox
from ..pacs.deliver import start_pacs_deliverer
from ..settings import get_settings
from ..webhooks.deliver import start_deliverer
from .celery_app import PLAN_BATCH, RUN_JOB, CeleryDispatcher, create_celery
from .context import WorkerContext
from .gpu_memory import start_publisher as start_gpu_publisher
from .supervision import start_parent_services

log = logging.getLogger(__name__)
settings = get_settings()
app = create_celery(settings)
_ctx: WorkerContext | None = None
_planner = None
_ctx_lock = threading.Lock()


def context() -> WorkerContext:
    """One per worker process, created after fork (no Redis sockets or CUDA shared with the parent). With
    ``--pool threads`` the task threads share it, and so one batcher and one set of writer threads."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            ctx = WorkerContext(settings)
            _ = (ctx.batcher, ctx.writers)  # built here, under the lock: cached_property does not lock on 3.12+
            _ctx = ctx
        return _ctx


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    from .pipeline import (
        run_job as run,  # imports torch-side modules only in the pool process
    )

    return run(context(), job_id)


@app.task(name=PLAN_BATCH, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def plan_batch(batch_id: str) -> str:
    """Make a batch's masks and submit its jobs (``jobs.batch_planning``); the API only queued it."""
    return planner().plan(batch_id)


def planner():
    """One per worker process: the batch service with a job submitter that queues through this Celery app."""
    global _planner
    if _planner is None:
        from ..jobs.batch_planning import BatchPlanner
        from ..jobs.batches import BatchService
        from ..jobs.maskbank import MaskBank
        from ..jobs.service import JobService

        ctx, s = context(), settings
        submissions = JobService(ctx.jobs, ctx.store, ctx.registry, CeleryDispatcher(app, s), s)
        bank = MaskBank(ctx.store, ctx.limits)
        _planner = BatchPlanner(
            BatchService(ctx.jobs, submissions, ctx.store, ctx.registry, masks=bank.make), s.max_attempts
        )
    return _planner


@signals.worker_process_init.connect
def _on_pool_process(**_):
    """In each pool process: publish its CUDA memory with the heartbeat (nothing while no GPU is in use)."""
    s = context().settings
    start_gpu_publisher(context().redis, s.heartbeat_seconds, max(3 * s.heartbeat_seconds, s.lease_seconds))


@signals.worker_ready.connect
def _on_ready(sender=None, **_):
    """In the worker's main process: presence heartbeat and the lease reaper (no torch here)."""
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) if sender else ["gpu"]
    ctx = WorkerContext(settings)
    start_parent_services(ctx, CeleryDispatcher(app, settings), queues)
    start_deliverer(Outbox(ctx.redis), settings)  # webhooks, off the job path
    start_pacs_deliverer(ctx.redis, ctx.store, settings)  # PACS deliveries, likewise
