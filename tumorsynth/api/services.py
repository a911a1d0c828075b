"""The long-lived clients the API uses, built once per app from Settings."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..imaging.nifti import VolumeLimits
from ..jobs.batches import BatchService
from ..jobs.connection import connect
from ..jobs.dispatch import Dispatcher
from ..jobs.maskbank import MaskBank
from ..jobs.service import JobService
from ..jobs.store import JobStore
from ..models.registry import ModelRegistry
from ..settings import Settings
from ..storage import make_store
from ..storage.base import ObjectStore
from ..workers.celery_app import CeleryDispatcher, create_celery
from .events import StreamSlots


def redis_client(settings: Settings) -> redis.Redis:
    """Short socket timeouts, so a frozen or lost Redis is a prompt 503 rather than a request hanging for 10–20 s.

    A dropped connection (Redis restarted) is retried once on a fresh one; a timeout is not retried.
    """
    t = settings.redis_timeout_seconds
    if not settings.redis_url:
        raise RuntimeError("TUMORSYNTH_REDIS_URL is not set (tumorsynth serve sets it for the embedded Redis)")
    return connect(
        settings.redis_url,
        socket_timeout=t,
        socket_connect_timeout=min(t, 1.0),
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    jobs: JobStore
    store: ObjectStore
    registry: ModelRegistry
    dispatcher: Dispatcher
    submissions: JobService
    batches: BatchService
    bank: MaskBank
    stream_slots: StreamSlots

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        client = redis_client(settings)
        jobs = JobStore(client)
        store = make_store(settings)
        registry = ModelRegistry(settings.model_dir)
        dispatcher = CeleryDispatcher(create_celery(settings, publish_timeout=settings.redis_timeout_seconds), settings)
        submissions = JobService(jobs, store, registry, dispatcher, settings)
        bank = MaskBank(store, VolumeLimits.from_settings(settings))
        batches = BatchService(jobs, submissions, store, registry, masks=bank.make)
        return cls(
            settings,
            client,
            jobs,
            store,
            registry,
            dispatcher,
            submissions,
            batches,
            bank,
            StreamSlots(settings.max_event_streams_per_tenant),
        )
