"""Live views of a job: server-sent events from the job store's change channel, and the preview montage."""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import redis
from fastapi.concurrency import run_in_threadpool

from ..jobs.store import events_channel
from ..schemas import TERMINAL

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 15.0


def _event(rec) -> str:
    data = {"id": rec.id, "status": rec.status, "completed_steps": rec.completed_steps,
            "total_steps": rec.total_steps}
    return f"event: status\ndata: {json.dumps(data)}\n\n"


async def job_events(r, jobs, rec, request):
    """The current state first (so nothing between subscribe and read is missed), then each change.

    Once the stream has started its status is sent; if the job store goes away then, the stream ends with an
    ``error`` event (the client reconnects, and gets a 503 until the store is back).
    """
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    try:
        async for event in _changes(pubsub, jobs, rec, request):
            yield event
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("event stream of job %s ended: job store unreachable (%s)", rec.id, type(exc).__name__)
        yield f"event: error\ndata: {json.dumps({'code': 'job_store_unavailable', 'retry_after': 5})}\n\n"
    finally:
        await run_in_threadpool(_close_quietly, pubsub)


def _close_quietly(pubsub) -> None:
    try:
        pubsub.close()
    except redis.RedisError:
        pass


async def _changes(pubsub, jobs, rec, request):
    await run_in_threadpool(pubsub.subscribe, events_channel(rec.id))
    current = await run_in_threadpool(jobs.get, rec.id)
    yield _event(current)
    if current.status in TERMINAL:
        return
    idle = 0.0
    while not await request.is_disconnected():
        msg = await run_in_threadpool(pubsub.get_message, timeout=1.0)
        if msg is None:
            idle += 1.0
            if idle >= HEARTBEAT_SECONDS:
                idle = 0.0
                yield ": keep-alive\n\n"
            continue
        idle = 0.0
        data = json.loads(msg["data"])
        yield f"event: status\ndata: {json.dumps(data)}\n\n"
        if data.get("status") in TERMINAL:
            return
        await asyncio.sleep(0)


def render_preview(rec, store, settings) -> bytes:
    from ..imaging.nifti import VolumeLimits, read_volume
    from ..imaging.preview import montage

    limits = VolumeLimits.from_settings(settings)
    images = [o for o in rec.outputs if o.kind == "image" and (o.sample_index or 0) == 0]
    mask_out = next((o for o in rec.outputs if o.kind == "mask"), None)
    volumes = []
    for o in images:
        vol = read_volume(store.get_bytes(o.key), field=o.name, limits=limits)
        volumes.append((o.modality or o.name, np.asarray(vol.data, dtype=np.float32), vol.spacing))
    mask = None
    if mask_out is not None:
        mask = np.asarray(read_volume(store.get_bytes(mask_out.key), field="mask", limits=limits).data)
    return montage(volumes, mask)
