"""Cross-job batching: jobs of one model, sampler and steps sampled as one batch by one sampling thread.

A GPU samples 8 volumes in one batch far faster than 8 one after the other (issue 15: batch 8 in bf16 at 0.126 s per
volume), but each Celery task is one job. So with ``tumorsynth worker --pool threads --concurrency N`` the N task
threads of a process each claim, read and prepare their own job, then hand it here; one sampling thread per process
takes the oldest waiting job and every waiting job with the same generator and batch key (``generator.batch_key``)
up to the batch limit, and runs them through ``generator.sample_batch`` at once. Each task thread then maps, encodes
and uploads its own outputs while the sampling thread already runs the next batch.

Waiting for partners: only while another job of this process is still being prepared (``preparing()``), and never
longer than ``max_wait_s`` after the oldest job arrived; a lone job (prefork, concurrency 1) never waits.
Memory: a batch holds at most ``max_samples`` samples, and on CUDA no more than the free memory fits, by the peak
memory per sample measured on earlier batches of the same generator (a first batch is not capped by memory).
Sample ``i`` of a job draws from its own generator (seed + i), so its partners change no random draw; with
``batch_invariant`` kernels (models/precision.py) a job is bit-identical alone and batched on the CPU.

No torch import here: this module is imported by the worker's main process, which must never touch CUDA.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
MEMORY_HEADROOM = 0.9  # of the free CUDA memory a batch may plan to use


class _Span:
    """One job's ``preparing()`` span; ends once, whichever of ``sample`` or the context's exit comes first."""

    def __init__(self, batcher: Batcher):
        self.batcher, self.ended = batcher, False

    def end(self) -> None:
        cond = self.batcher._cond
        with cond:
            if not self.ended:
                self.ended = True
                self.batcher._preparing -= 1
                cond.notify_all()


@dataclass(eq=False)  # compared by identity
class _Waiting:
    generator: object
    key: tuple
    job: object
    samples: int
    progress: object
    since: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None

    def joins(self, head: _Waiting) -> bool:
        return self.generator is head.generator and self.key == head.key


class Batcher:
    def __init__(self, max_samples: int, max_wait_s: float):
        self.max_samples, self.max_wait_s = max(1, int(max_samples)), max(0.0, float(max_wait_s))
        self._cond = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._preparing = 0
        self._thread: threading.Thread | None = None
        self._per_sample_bytes: dict[int, float] = {}  # id(generator) → peak CUDA bytes per sample seen
        self.batches: deque[int] = deque(maxlen=1000)  # jobs per batch run, newest last (tests, logs)

    @contextmanager
    def preparing(self):
        """Around a job's claim-to-prepare span: the sampling thread may wait for it to join a batch. Yields the
        span; ``sample(..., span)`` ends it in the same step as the job joins the waiting list (ended apart, the
        sampling thread could see nobody preparing and the job not yet waiting, and leave it out of a batch)."""
        span = _Span(self)
        with self._cond:
            self._preparing += 1
        try:
            yield span
        finally:
            span.end()

    def sample(self, generator, job, samples: int, progress, span: _Span | None = None):
        """``generator.sample_batch`` for this job, run with whatever partners are waiting; blocks until done and
        returns this job's share, or raises what its progress raised (e.g. ``JobCanceled``) or what sampling raised.
        ``span``: the job's ``preparing()`` span, ended as the job starts waiting."""
        item = _Waiting(generator, generator.batch_key(job.params), job, samples, progress)
        with self._cond:
            self._waiting.append(item)
            if span is not None:
                span.end()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="tumorsynth-sampler", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        item.done.wait()
        if isinstance(item.result, BaseException):
            raise item.result
        return item.result

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                self._run(batch)
            except BaseException as exc:  # every job of the batch gets the failure; the thread lives on
                log.exception("a batch of %d jobs failed", len(batch))
                for item in batch:
                    item.result = exc
            finally:
                for item in batch:
                    item.done.set()

    def _next_batch(self) -> list[_Waiting]:
        with self._cond:
            while not self._waiting:
                self._cond.wait()
            head = self._waiting[0]
            limit = self._limit(head.generator)
            while True:
                partners = [w for w in self._waiting if w.joins(head)]
                waited = time.monotonic() - head.since
                if sum(w.samples for w in partners) >= limit or self._preparing == 0 or waited >= self.max_wait_s:
                    break
                self._cond.wait(timeout=self.max_wait_s - waited)
            batch: list[_Waiting] = []
            total = 0
            for w in partners:
                if batch and total + w.samples > limit:
                    continue  # the next batch takes it (the head always goes, however many samples it asks)
                batch.append(w)
                total += w.samples
            self._waiting = [w for w in self._waiting if w not in batch]
            return batch

    def _run(self, batch: list[_Waiting]) -> None:
        generator: Any = batch[0].generator  # a family with sample_batch (models/ldm/runner.py)
        cuda = _cuda_device(generator)
        torch: Any = sys.modules.get("torch")  # imported by the generator, in this worker child
        if cuda is not None:
            torch.cuda.reset_peak_memory_stats(cuda)
            before = torch.cuda.memory_allocated(cuda)
        started = time.monotonic()
        results = generator.sample_batch([w.job for w in batch], [w.progress for w in batch])
        log.info(
            "sampled %d jobs (%d samples) as one batch in %.3f s",
            len(batch),
            sum(w.samples for w in batch),
            time.monotonic() - started,
        )
        if cuda is not None:
            per_sample = (torch.cuda.max_memory_allocated(cuda) - before) / sum(w.samples for w in batch)
            key = id(generator)
            self._per_sample_bytes[key] = max(per_sample, self._per_sample_bytes.get(key, 0.0))
        for w, r in zip(batch, results):
            w.result = r
        self.batches.append(len(batch))

    def _limit(self, generator) -> int:
        cuda, per_sample = _cuda_device(generator), self._per_sample_bytes.get(id(generator))
        if cuda is None or not per_sample:
            return self.max_samples
        torch = sys.modules["torch"]
        free, _ = torch.cuda.mem_get_info(cuda)
        free += torch.cuda.memory_reserved(cuda) - torch.cuda.memory_allocated(cuda)  # the caching allocator's
        return max(1, min(self.max_samples, int(MEMORY_HEADROOM * free / per_sample)))


def _cuda_device(generator):
    device = getattr(generator, "device", None)
    return device if getattr(device, "type", None) == "cuda" else None
