"""Celery tasks: thin, they take a job id. Everything else is in pipeline.py."""

from __future__ import annotations

import logging

from celery import signals

from ..pacs.deliver import start_pacs_deliverer
from ..jobs.outbox import Outbox
from ..settings import get_settings
from ..webhooks.deliver import start_deliverer
from .celery_app import RUN_JOB, CeleryDispatcher, create_celery
from .context import WorkerContext
from .gpu_memory import start_publisher as start_gpu_publisher
from .supervision import start_parent_services

log = logging.getLogger(__name__)
settings = get_settings()
app = create_celery(settings)
_ctx: WorkerContext | None = None


def context() -> WorkerContext:
    """One per worker process, created after fork (no Redis sockets or CUDA shared with the parent)."""
    global _ctx
    if _ctx is None:
        _ctx = WorkerContext(settings)
    return _ctx


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    from .pipeline import (
        run_job as run,  # imports torch-side modules only in the pool process
    )

    return run(context(), job_id)


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
