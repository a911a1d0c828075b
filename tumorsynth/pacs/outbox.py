"""PACS deliveries in Redis, written in the same transaction as the job's success (as the webhook outbox does).

``ts:pacs:{job_id}`` holds a job's delivery (state, attempts, last error); ``ts:pacs:due`` orders pending ones by
when they are next due. The worker's delivery loop claims due ones by pushing their due time past a claim timeout,
so a worker that dies mid-send leaves the delivery due again (a PACS stores a re-sent instance with the same SOP
Instance UID once). ``ts:pacs:counts`` counts outcomes for ``/metrics``.
"""

from __future__ import annotations

import json
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..jobs import keys
from ..jobs.records import JobRecord

DUE = keys.PACS_DUE
COUNTS = keys.PACS_COUNTS
KEEP_SECONDS = 30 * 24 * 3600  # a delivery's record lives as long as a job is worth asking about

# Take up to ARGV[3] deliveries due by ARGV[1], making them due again at ARGV[2] (the claim timeout).
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


def delivery_key(job_id: str) -> str:
    return keys.pacs_delivery(job_id)


def on_transition(pipe, before: str | None, rec: JobRecord) -> None:
    """Add to ``pipe`` (inside MULTI) the job's PACS delivery when it has just succeeded and asked for one."""
    if rec.request.get("send_to") != "pacs" or rec.status != "succeeded" or before == "succeeded":
        return
    t = time.time()
    record = {
        "job_id": rec.id,
        "tenant": rec.tenant,
        "target": "pacs",
        "destination": "",
        "state": "pending",
        "attempts": 0,
        "instances": None,
        "created_at": t,
        "next_attempt_at": t,
        "last_error": None,
        "delivered_at": None,
    }
    pipe.set(delivery_key(rec.id), json.dumps(record))
    pipe.zadd(DUE, {rec.id: t})


class PacsOutbox:
    def __init__(self, r):
        self.r = r
        self._claim = r.register_script(_CLAIM)

    def get(self, job_id: str) -> dict | None:
        raw = self.r.get(delivery_key(job_id))
        return None if raw is None else json.loads(raw)

    def claim_due(self, claim_seconds: float, limit: int = 4) -> list[dict]:
        t = time.time()
        out = []
        for raw_id in self._claim(keys=[DUE], args=[t, t + claim_seconds, limit]):
            d = self.get(raw_id.decode())
            if d is None:
                self.r.zrem(DUE, raw_id)
            else:
                out.append(d)
        return out

    def save(self, d: dict, outcome: str | None = None) -> None:
        """Write an attempt's outcome ("ok" or "error"); pending ones stay due at ``next_attempt_at``."""
        with self.r.pipeline() as p:
            if d["state"] == "pending":
                p.set(delivery_key(d["job_id"]), json.dumps(d))
                p.zadd(DUE, {d["job_id"]: d["next_attempt_at"]})
            else:
                p.set(delivery_key(d["job_id"]), json.dumps(d), ex=KEEP_SECONDS)
                p.zrem(DUE, d["job_id"])
                p.hincrby(COUNTS, f"deliveries:{d['state']}", 1)
            if outcome:
                p.hincrby(COUNTS, f"attempts:{outcome}", 1)
            p.execute()


def metrics(r):
    """Prometheus families for ``/metrics``: finished deliveries by outcome, attempts by result, pending now."""
    counts = {k.decode(): float(v) for k, v in r.hgetall(COUNTS).items()}
    deliveries = CounterMetricFamily(
        "tumorsynth_pacs_deliveries", "PACS deliveries finished, by outcome", labels=["outcome"]
    )
    attempts = CounterMetricFamily(
        "tumorsynth_pacs_delivery_attempts", "PACS delivery attempts, by result", labels=["result"]
    )
    for outcome in ("delivered", "failed"):
        deliveries.add_metric([outcome], counts.get(f"deliveries:{outcome}", 0.0))
    for result in ("ok", "error"):
        attempts.add_metric([result], counts.get(f"attempts:{result}", 0.0))
    pending = GaugeMetricFamily("tumorsynth_pacs_deliveries_pending", "PACS deliveries waiting for an attempt")
    pending.add_metric([], int(r.zcard(DUE)))
    return deliveries, attempts, pending
