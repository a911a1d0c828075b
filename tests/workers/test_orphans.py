"""A queued job whose message a failover lost (or stranded in kombu's unacked hash) is sent again, once; one whose
message waits, or that is fresh, is not."""

from __future__ import annotations

import json
import time
import uuid

from tumorsynth.jobs.records import JobRecord, new_id
from tumorsynth.settings import Settings
from tumorsynth.workers.celery_app import CeleryDispatcher, create_celery
from tumorsynth.workers.context import WorkerContext
from tumorsynth.workers.orphans import requeue_orphans


def _queued(ctx: WorkerContext, queue: str, age: float) -> JobRecord:
    t = time.time() - age
    rec = JobRecord(
        id=new_id("job"),
        tenant="t",
        model="ldm/tiny@1",
        family="ldm",
        queue=queue,
        request={},
        created_at=t,
        updated_at=t,
    )
    ctx.jobs.create(rec)
    return rec


def test_lost_messages_are_resent_once(redis_server):
    queue = f"orphans-{uuid.uuid4().hex[:8]}"
    s = Settings(redis_url=redis_server.url, family_queues={"ldm": queue})
    ctx, dispatcher = WorkerContext(s), CeleryDispatcher(create_celery(s), s)
    lost = _queued(ctx, queue, age=100)  # its message is nowhere: lost with a primary
    waiting = _queued(ctx, queue, age=100)
    dispatcher.send(waiting.id, "ldm")  # its message waits in the queue
    fresh = _queued(ctx, queue, age=1)  # too young to tell
    stranded = _queued(ctx, queue, age=100)  # delivered to a worker that lost its connection: only in "unacked"
    message = json.dumps([{"headers": {"argsrepr": f"('{stranded.id}',)"}}, "", queue])
    ctx.redis.hset("unacked", f"tag-{stranded.id}", message)
    assert sorted(requeue_orphans(ctx, dispatcher, after_seconds=30, queues=[queue])) == sorted([lost.id, stranded.id])
    assert ctx.redis.llen(queue) == 3
    assert requeue_orphans(ctx, dispatcher, after_seconds=30, queues=[queue]) == [], "a resent job was sent again"
    assert fresh.id.encode() not in b"".join(ctx.redis.lrange(queue, 0, -1))
    ctx.redis.hdel("unacked", f"tag-{stranded.id}")
