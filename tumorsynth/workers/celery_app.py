"""The Celery application, configured from Settings. Imports no torch: a prefork parent must never touch CUDA."""

from __future__ import annotations

from celery import Celery

from ..jobs.connection import celery_broker
from ..jobs.dispatch import Dispatcher
from ..settings import Settings, get_settings

RUN_JOB = "tumorsynth.run_job"


def create_celery(settings: Settings | None = None) -> Celery:
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
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds} | sentinel_options,
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
    return app


class CeleryDispatcher:
    """``jobs.dispatch.Dispatcher`` on Celery: sends a job id to its family's queue. Used by the API and the reaper;
    the job record is written first."""

    def __init__(self, celery: Celery, settings: Settings):
        self.celery, self.settings = celery, settings

    def send(self, job_id: str, family: str, queue: str | None = None) -> None:
        """Queue a job id; ``queue`` (a requeue) is the one recorded on the job, else the family's."""
        self.celery.send_task(RUN_JOB, args=[job_id], queue=queue or self.settings.queue_for(family))


_: type[Dispatcher] = CeleryDispatcher  # mypy checks that it implements the protocol
