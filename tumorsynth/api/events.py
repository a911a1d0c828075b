"""``GET /v1/jobs/{id}/events``: server-sent events from the job store's change channel.

A stream holds no thread: it waits on its own asyncio Redis connection (pub/sub), so open streams cost a socket and
a little memory each, and never the thread pool that the other routes run on. A tenant may hold at most
``max_event_streams_per_tenant`` open streams in one API process; one more is a 429 with Retry-After.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import redis
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import TooManyEventStreams
from ..jobs.connection import connect_async
from ..jobs.store import events_channel
from ..schemas import TERMINAL

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 15.0
POLL_SECONDS = 1.0  # how often an idle stream checks that its client is still there


class StreamSlots:
    """Open streams per tenant, in this process (touched only on the event loop, so no lock)."""

    def __init__(self, per_tenant: int):
        self.per_tenant = per_tenant
        self.open: Counter[str] = Counter()

    def take(self, tenant: str) -> None:
        if self.open[tenant] >= self.per_tenant:
            raise TooManyEventStreams(
                f"{self.open[tenant]} event streams of your tenant are open, the most allowed; close one, or poll "
                "GET /v1/jobs/{id}"
            )
        self.open[tenant] += 1

    def give_back(self, tenant: str) -> None:
        self.open[tenant] -= 1
        if self.open[tenant] <= 0:
            del self.open[tenant]


class EventStream(StreamingResponse):
    """Gives its slot back however the response ends: finished, client gone, or never started."""

    def __init__(self, content, release, **kw):
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _event(data: dict) -> str:
    return f"event: status\ndata: {json.dumps(data)}\n\n"


async def job_events(settings, jobs, rec, request):
    """The current state first (so nothing between subscribe and read is missed), then each change.

    If the job store goes away mid-stream, the stream ends with an ``error`` event (the client reconnects, and
    gets a 503 until the store is back).
    """
    t = settings.redis_timeout_seconds
    client = connect_async(settings.redis_url, socket_timeout=t, socket_connect_timeout=min(t, 1.0))
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        async for event in _changes(pubsub, jobs, rec, request):
            yield event
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("event stream of job %s ended: job store unreachable (%s)", rec.id, type(exc).__name__)
        yield f"event: error\ndata: {json.dumps({'code': 'job_store_unavailable', 'retry_after': 5})}\n\n"
    finally:
        try:
            await pubsub.aclose()
            await client.aclose()
        except redis.RedisError:
            pass


async def _changes(pubsub, jobs, rec, request):
    await pubsub.subscribe(events_channel(rec.id))
    current = await run_in_threadpool(jobs.get, rec.id)
    yield _event(
        {
            "id": current.id,
            "status": current.status,
            "completed_steps": current.completed_steps,
            "total_steps": current.total_steps,
        }
    )
    if current.status in TERMINAL:
        return
    idle = 0.0
    while not await request.is_disconnected():
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_SECONDS)
        if msg is None:
            idle += POLL_SECONDS
            if idle >= HEARTBEAT_SECONDS:
                idle = 0.0
                yield ": keep-alive\n\n"
            continue
        idle = 0.0
        data = json.loads(msg["data"])
        yield _event(data)
        if data.get("status") in TERMINAL:
            return
