"""The Celery application, configured from Settings. Imports no torch: a prefork parent must never touch CUDA.

Queues have ten priority levels (kombu's Redis transport keeps one list per level and pops level 0 first): the
dispatcher gives a tenant's n-th outstanding job level min(n, 9), so one tenant's flood queues behind another
tenant's first job instead of ahead of it (issue 14, #12).
"""

from __future__ import annotations

from celery import Celery

from ..jobs.connection import celery_broker
from ..jobs.dispatch import Dispatcher
from ..settings import Settings, get_settings

RUN_JOB = "tumorsynth.run_job"
PLAN_BATCH = "tumorsynth.plan_batch"
PRIORITY_STEPS = list(range(10))  # 0 first; producer and consumer must agree (the lists are named by level)
PRIORITY_SEP = "\x06\x16"  # kombu's separator between a queue's name and its level in the list's key


def queue_lists(queue: str) -> list[str]:
    """The Redis lists that hold a queue's messages, one per priority level (level 0 is the queue's own name)."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS[1:]]


def create_celery(settings: Settings | None = None, publish_timeout: float | None = None) -> Celery:
    """``publish_timeout``: for a producer (the API), how long a publish may wait on the broker before it fails.

    Without it a frozen broker (SIGSTOP, a half-open connection) hangs the request for good; workers leave it unset,
    as their blocking BRPOP has its own timeout and health checks.
    """
    settings = settings or get_settings()
    if not settings.redis_url:
        raise RuntimeError("TUMORSYNTH_REDIS_URL is not set (tumorsynth serve sets it for the embedded Redis)")
    if settings.visibility_timeout_seconds <= settings.job_time_limit_seconds:
        raise ValueError(
            "TUMORSYNTH_VISIBILITY_TIMEOUT_SECONDS must exceed TUMORSYNTH_JOB_TIME_LIMIT_SECONDS, "
            "or Redis redelivers long jobs while they still run"
        )
    broker, sentinel_options = celery_broker(settings.redis_url, settings.redis_timeout_seconds)
    app = Celery("tumorsynth", broker=broker, include=["tumorsynth.workers.tasks"])
    app.conf.update(
        task_ignore_result=True,  # the job store, not Celery's result backend, is the source of truth
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # bounded by our own attempt cap (JobStore.claim)
        worker_prefetch_multiplier=1,
        broker_transport_options=sentinel_options | transport_options(settings, publish_timeout),
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_time_limit=settings.job_time_limit_seconds + 60,
        task_soft_time_limit=settings.job_time_limit_seconds,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue="gpu",
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    if publish_timeout is not None:
        # one quick retry on a fresh connection (a restarted broker), then the submission is a 503
        app.conf.task_publish_retry_policy = {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.1,
            "interval_max": 0.1,
        }
        app.conf.broker_connection_timeout = publish_timeout
    return app


def transport_options(settings: Settings, publish_timeout: float | None) -> dict:
    options = {"visibility_timeout": settings.visibility_timeout_seconds, "priority_steps": PRIORITY_STEPS}
    if publish_timeout is not None:
        options |= {"socket_timeout": publish_timeout, "socket_connect_timeout": min(publish_timeout, 1.0)}
    return options


class CeleryDispatcher:
    """``jobs.dispatch.Dispatcher`` on Celery: sends a job id to its family's queue. Used by the API and the reaper;
    the job record is written first."""

    def __init__(self, celery: Celery, settings: Settings):
        self.celery, self.settings = celery, settings

    def send(self, job_id: str, family: str, queue: str | None = None, priority: int = 0) -> None:
        """Queue a job id; ``queue`` (a requeue) is the one recorded on the job, else the family's. ``priority``:
        0 runs first, 9 last (see ``jobs.fairness``)."""
        self.celery.send_task(
            RUN_JOB,
            args=[job_id],
            queue=queue or self.settings.queue_for(family),
            priority=max(0, min(int(priority), PRIORITY_STEPS[-1])),
        )

    def send_plan(self, batch_id: str, family: str) -> None:
        """Plan a batch (make its masks, submit its jobs) in a worker of the model's queue, ahead of jobs."""
        self.celery.send_task(PLAN_BATCH, args=[batch_id], queue=self.settings.queue_for(family), priority=0)


_: type[Dispatcher] = CeleryDispatcher  # mypy checks that it implements the protocol
