"""What a worker process holds: settings, the job store, the object store, the model registry, the batcher and the
output writer threads."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import redis

from ..imaging.nifti import VolumeLimits
from ..jobs.connection import connect
from ..jobs.store import JobStore
from ..models.registry import ModelRegistry
from ..settings import Settings
from ..storage import make_store
from ..storage.base import ObjectStore
from .batching import Batcher


@dataclass
class WorkerContext:
    settings: Settings

    @cached_property
    def redis(self) -> redis.Redis:
        if not self.settings.redis_url:
            raise RuntimeError("TUMORSYNTH_REDIS_URL is not set (tumorsynth serve sets it for the embedded Redis)")
        return connect(self.settings.redis_url, socket_timeout=10, health_check_interval=30)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.redis)

    @cached_property
    def store(self) -> ObjectStore:
        return make_store(self.settings)

    @cached_property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.settings.model_dir)

    @cached_property
    def limits(self) -> VolumeLimits:
        return VolumeLimits.from_settings(self.settings)

    @cached_property
    def batcher(self) -> Batcher:
        """Shared by the task threads of a ``--pool threads`` worker process (workers/batching.py)."""
        return Batcher(self.settings.batch_max_samples, self.settings.batch_max_wait_ms / 1000)

    @cached_property
    def writers(self) -> ThreadPoolExecutor:
        """Threads that encode and upload outputs (ISA-L and the S3 client release the GIL)."""
        return ThreadPoolExecutor(self.settings.output_writers, thread_name_prefix="tumorsynth-writer")

    @cached_property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"
