"""Behind Sentinel: queued jobs whose queue message a failover took away, sent again.

``workers/reconcile.py`` resends jobs whose message is on no list and in no worker's hands (kombu's ``unacked``).
A failover adds a case it counts as held: a message delivered to a worker whose connection died with the primary
stays in ``unacked`` until the visibility timeout (hours). This sweep, run only with a ``sentinel://`` URL, ignores
``unacked``.

Behind Sentinel, a failover can lose what the dead primary had not yet passed to its replica. A submission is
acknowledged only once its record and message are on a replica (``WAIT``), but a worker's ``BRPOP`` that took the
message, followed by the primary's death, leaves the job ``queued`` with its message at best in kombu's ``unacked``
hash, which is given back only after the visibility timeout (hours), at worst nowhere. The reaper looks for jobs
queued longer than ``after_seconds`` whose id is not in their queue, and sends them again.

A message sent twice is harmless: ``JobStore.claim`` runs a job once (a second message finds it leased or
finished). So a false positive (a message prefetched by a worker still busy with another job) costs one no-op
claim, and lets an idle worker take the job sooner.
"""

from __future__ import annotations

import logging
import time

from ..jobs import keys
from ..jobs.dispatch import Dispatcher
from .celery_app import queue_lists
from .context import WorkerContext

log = logging.getLogger(__name__)


def _waiting(r, queue: str) -> bytes:
    """Every message waiting in ``queue``'s lists (one per priority level; the job id is in each message's
    ``argsrepr`` header)."""
    return b"\n".join(m for name in queue_lists(queue) for m in r.lrange(name, 0, -1))


def requeue_orphans(ctx: WorkerContext, dispatcher: Dispatcher, after_seconds: float, queues: list[str]) -> list[str]:
    """Resend the orphans of ``queues`` (the ones this worker consumes: every queue has a worker looking after it)."""
    r, sent = ctx.redis, []
    horizon = time.time() - after_seconds
    for queue in sorted(set(queues)):
        stale = [
            j.decode() if isinstance(j, bytes) else str(j) for j in r.zrangebyscore(keys.queued(queue), "-inf", horizon)
        ]
        if not stale:
            continue
        messages = _waiting(r, queue)
        for job_id in stale:
            if job_id.encode() in messages:
                continue
            rec = ctx.jobs.get(job_id)
            if rec is None or rec.status != "queued" or rec.updated_at > horizon:
                continue
            log.warning(
                "job %s: queued %.0f s with no message in %s (lost in a failover?); sending it again",
                job_id,
                time.time() - rec.updated_at,
                queue,
            )
            dispatcher.send(rec.id, rec.family, rec.queue)
            sent.append(rec.id)
    return sent
