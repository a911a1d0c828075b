"""The steps of one job: claim → load model → read inputs → sample (progress, cancel) → write outputs → finish."""

from __future__ import annotations

import functools
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any

import redis

from ..errors import JobCanceled, LeaseLost, TumorsynthError
from ..imaging.labels import validate_mask
from ..imaging.nifti import Volume, read_volume
from ..jobs.memory import check_output_memory, output_shape
from ..jobs.records import JobRecord
from ..models.base import GenerationParams
from ..models.loader import load_generator
from ..models.registry import ModelEntry
from ..storage.retry import with_retries
from .context import WorkerContext
from .durable import finish
from .outputs import OutputWriter

log = logging.getLogger(__name__)


def params_for(rec: JobRecord, entry: ModelEntry) -> GenerationParams:
    """The job's request, already validated by the API, with the model's defaults filled in."""
    req = rec.request
    sampler = entry.sampler((req.get("sampler") or {}).get("name"))
    return GenerationParams(
        num_samples=req.get("num_samples", 1),
        seed=req["seed"],
        sampler=sampler.name,
        steps=(req.get("sampler") or {}).get("steps") or sampler.default_steps,
        modalities=tuple(req.get("modalities") or entry.modalities),
        tumor_class=req.get("tumor_class"),
        output_grid=req.get("output_grid", "input"),
        options=request_options(req),
    )


def request_options(req: dict) -> dict:
    """The job's ``options`` (resolved by the API); records queued before ``options`` existed carry only a
    top-level ``truncation``. The runner checks them again against the model."""
    options = dict(req.get("options") or {})
    if req.get("truncation") is not None:
        options.setdefault("truncation", req["truncation"])
    return options


@contextmanager
def heartbeat(ctx: WorkerContext, job_id: str, token: int):
    """Keep the lease alive while the job runs, even during long steps (model load, decode, upload)."""
    stop = threading.Event()
    s = ctx.settings

    def beat() -> None:
        while not stop.wait(s.heartbeat_seconds):
            try:
                ctx.jobs.heartbeat(job_id, token, s.lease_seconds)
            except LeaseLost:
                return
            except Exception:  # a Redis blip: the lease is long enough to survive a few missed beats
                log.warning("heartbeat for %s failed", job_id, exc_info=True)

    t = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)


def read_inputs(ctx: WorkerContext, rec: JobRecord) -> dict[str, Volume]:
    """Inputs were validated on upload; they are read through the same checks again (defence in depth)."""
    out = {}
    for item in rec.inputs:
        fetch = functools.partial(ctx.store.get_bytes, item.key)
        raw = with_retries(fetch, attempts=ctx.settings.storage_retries)
        out[item.name] = read_volume(
            raw, field=item.name, limits=ctx.limits, labels=item.label_convention is not None
        )  # a mask: uint8 labels
    return out


def run_job(ctx: WorkerContext, job_id: str) -> str:
    s = ctx.settings
    claim = ctx.jobs.claim(job_id, ctx.worker_id, s.lease_seconds, s.max_attempts)
    if claim.record is None:
        log.info("job %s not run: %s", job_id, claim.reason)
        return claim.reason
    rec, token = claim.record, claim.record.attempts
    # One line at each end of an attempt, with wall-clock times: operators (and the fault tests) can line up
    # attempts across workers and see that two never overlapped.
    log.info("job %s attempt %d started on %s at %.6f", job_id, token, ctx.worker_id, time.time())
    outcome = "crashed"
    try:
        outcome = _run_attempt(ctx, rec, token)
        return outcome
    finally:
        log.info("job %s attempt %d ended (%s) on %s at %.6f", job_id, token, outcome, ctx.worker_id, time.time())


def _run_attempt(ctx: WorkerContext, rec: JobRecord, token: int) -> str:
    s, job_id = ctx.settings, rec.id
    writer: OutputWriter | None = None
    with heartbeat(ctx, job_id, token):
        try:

            def progress(done: int, of: int) -> None:
                now = ctx.jobs.progress(job_id, token, done, of, s.lease_seconds)
                if now.status == "canceling":
                    raise JobCanceled(f"job {job_id} canceled at step {done}/{of}")

            with ctx.batcher.preparing() as span:  # jobs waiting to be batched may wait for this one
                entry = ctx.registry.get(rec.model)
                params = params_for(rec, entry)
                generator = load_generator(entry, s.device, precision=s.precision, batch_invariant=s.batch_invariant)
                inputs = read_inputs(ctx, rec)
                check_output_memory(
                    output_shape([v.shape for v in inputs.values()], params.output_grid, entry.output_shape),
                    len(params.modalities),
                    params.num_samples,
                    s.max_job_output_bytes,
                )
                total = generator.total_steps(params)
                ctx.jobs.progress(job_id, token, 0, total, s.lease_seconds)
                if batches(generator, s):  # workers/batching.py: sampled with whatever partners are waiting
                    batching: Any = generator  # a family with prepare/sample_batch/finish (models/ldm/runner.py)
                    job = batching.prepare(params, inputs)
                    images = ctx.batcher.sample(generator, job, params.num_samples, progress, span)
                    volumes = batching.finish(job, images)
                else:
                    span.end()
                    volumes = generator.generate(params, inputs, progress)
            writer = OutputWriter(ctx.store, rec, entry, params, s.storage_retries, ctx.writers, s.dicom_uid_root)
            mask = None
            if "mask" in inputs:
                mask = (inputs["mask"], validate_mask(inputs["mask"]).convention)
            outputs = writer.write(volumes, mask)
            finish(ctx, job_id, token, "succeeded", outputs=outputs, completed_steps=total, total_steps=total)
            writer.sweep_other_attempts()
            return "succeeded"
        except LeaseLost:
            log.warning("job %s: lease lost, another attempt owns it; dropping this one", job_id)
            _discard(writer)
            return "lease_lost"
        except JobCanceled:
            _discard(writer)
            finish(ctx, job_id, token, "canceled")
            return "canceled"
        except TumorsynthError as exc:
            _discard(writer)
            return _fail(ctx, job_id, token, exc.code, exc.message)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The job store is out of reach, so this attempt cannot know whether it still owns the job: it must not
            # fail it, nor delete its uploads (a finish may have landed before the connection broke). Its lease
            # lapses and the reaper requeues the job once Redis answers again.
            log.warning("job %s: job store unreachable (%s); giving up attempt %d", job_id, exc, token)
            return "store_unreachable"
        except Exception as exc:  # a bug or a library failure: the job fails with a code, the worker lives on
            log.exception("job %s failed", job_id)
            _discard(writer)
            return _fail(ctx, job_id, token, "internal_error", f"{type(exc).__name__}: {exc}")


def batches(generator, settings) -> bool:
    """Whether this job goes through the batcher: the family samples in batches (``sample_batch``) and batches of
    more than one sample are allowed."""
    return hasattr(generator, "sample_batch") and settings.batch_max_samples > 1


def _discard(writer: OutputWriter | None) -> None:
    if writer is not None:
        writer.discard()


def _fail(ctx: WorkerContext, job_id: str, token: int, code: str, message: str) -> str:
    try:
        finish(ctx, job_id, token, "failed", error={"code": code, "message": message})
    except LeaseLost:
        return "lease_lost"
    return "failed"
