"""The webhook outbox in Redis: deliveries are written in the same transaction as the job transition they report
(``JobStore.update``), so it lives beside the store; ``webhooks.deliver`` sends them.

``ts:webhook:{id}`` holds a delivery (its fixed body, attempts, state); ``ts:webhooks:due`` orders pending ones by
when they are next due; ``ts:job:{job_id}:webhooks`` lists a job's deliveries. A delivery loop claims due ones by
pushing their due time past a claim timeout, so a worker that dies mid-delivery leaves it due again: nothing pending
is lost, and at worst a receiver sees the same ``webhook-id`` twice (receivers deduplicate on it).
"""

from __future__ import annotations

import json
import secrets
import time

from . import keys
from .records import JobRecord, rfc3339

DUE = keys.WEBHOOKS_DUE
KEEP_SECONDS = 7 * 24 * 3600  # a finished delivery's record is kept this long
EVENTS = ("job.started", "job.succeeded", "job.failed", "job.canceled")
DEFAULT_EVENTS = ("job.succeeded", "job.failed", "job.canceled")

# Take up to ARGV[3] deliveries due by ARGV[1], making them due again at ARGV[2] (the claim timeout).
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


delivery_key = keys.webhook
job_deliveries_key = keys.job_webhooks


def event_for(before: str | None, rec: JobRecord) -> str | None:
    """The webhook event a transition makes, if any: the first start, and the end."""
    if before == rec.status:
        return None
    if rec.status == "running" and before == "queued" and rec.attempts == 1:
        return "job.started"
    if rec.status in ("succeeded", "failed", "canceled"):
        return f"job.{rec.status}"
    return None


def payload(event: str, rec: JobRecord) -> dict:
    """The body: what happened and the job's state; fetch ``GET /v1/jobs/{id}`` for fresh download URLs."""
    data = {
        "id": rec.id,
        "status": rec.status,
        "model": rec.model,
        "created_at": rfc3339(rec.created_at),
        "started_at": rfc3339(rec.started_at),
        "completed_at": rfc3339(rec.completed_at),
        "attempts": rec.attempts,
        "error": rec.error,
        "batch_id": rec.batch_id,
        "metadata": rec.request.get("metadata"),
        "outputs": [
            {
                "name": o.name,
                "modality": o.modality,
                "sample_index": o.sample_index,
                "kind": o.kind,
                "size": o.size,
                "sha256": o.sha256,
            }
            for o in rec.outputs
        ],
    }
    # the tenant is signed with the body: a receiver shared by tenants (or a URL one tenant points at another's
    # receiver) can tell whose job this is, and the webhook-tenant header cannot be changed without the body
    return {"type": event, "timestamp": rfc3339(time.time()), "tenant": rec.tenant, "data": data}


def on_transition(pipe, before: str | None, rec: JobRecord) -> None:
    """Add to ``pipe`` (inside MULTI) a delivery for this transition, if the job asked for one."""
    url = rec.request.get("webhook")
    event = event_for(before, rec) if url else None
    if event is None or event not in (rec.request.get("webhook_events") or DEFAULT_EVENTS):
        return
    delivery_id = f"msg_{secrets.token_hex(12)}"
    body = json.dumps(payload(event, rec), separators=(",", ":"))
    record = {
        "id": delivery_id,
        "job_id": rec.id,
        "tenant": rec.tenant,
        "url": url,
        "type": event,
        "body": body,
        "state": "pending",
        "attempts": 0,
        "created_at": time.time(),
        "next_attempt_at": time.time(),
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
    }
    pipe.set(delivery_key(delivery_id), json.dumps(record))
    pipe.rpush(job_deliveries_key(rec.id), delivery_id)
    pipe.zadd(DUE, {delivery_id: record["next_attempt_at"]})


class Outbox:
    def __init__(self, r):
        self.r = r
        self._claim = r.register_script(_CLAIM)

    def claim_due(self, claim_seconds: float, limit: int = 16) -> list[dict]:
        t = time.time()
        ids = self._claim(keys=[DUE], args=[t, t + claim_seconds, limit])
        out = []
        for raw_id in ids:
            d = self.get(raw_id.decode())
            if d is None:
                self.r.zrem(DUE, raw_id)
            else:
                out.append(d)
        return out

    def get(self, delivery_id: str) -> dict | None:
        raw = self.r.get(delivery_key(delivery_id))
        return None if raw is None else json.loads(raw)

    def for_job(self, job_id: str) -> list[dict]:
        ids = [i.decode() for i in self.r.lrange(job_deliveries_key(job_id), 0, -1)]
        return [d for d in (self.get(i) for i in ids) if d is not None]

    def save(self, d: dict) -> None:
        """Write an attempt's outcome: pending ones stay due at ``next_attempt_at``, finished ones leave the queue."""
        with self.r.pipeline() as p:
            if d["state"] == "pending":
                p.set(delivery_key(d["id"]), json.dumps(d))
                p.zadd(DUE, {d["id"]: d["next_attempt_at"]})
            else:
                p.set(delivery_key(d["id"]), json.dumps(d), ex=KEEP_SECONDS)
                p.zrem(DUE, d["id"])
                p.expire(job_deliveries_key(d["job_id"]), KEEP_SECONDS)
            p.execute()
