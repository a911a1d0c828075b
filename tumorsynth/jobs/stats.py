"""Operational statistics kept in Redis, written in the same transaction as the job transitions they count.

Workers are separate processes (and machines), so in-process Prometheus counters would be per process and lost on
restart. Instead every transition adds to a few Redis hashes and sorted sets, and the API's ``/metrics`` collector
(``api/metrics.py``) reads them at scrape time. Histogram buckets are stored cumulatively-ready (one counter per
upper bound), as Prometheus expects.
"""

from __future__ import annotations

from . import fairness, keys

STATUS = keys.STATS_STATUS
FAILURES = keys.STATS_FAILURES
REDELIVERIES = keys.STATS_REDELIVERIES
STEPS = keys.STATS_STEPS
SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 10800)


queued_key = keys.queued
hist_key = keys.stats_histogram


def _observe(pipe, name: str, model: str, value: float) -> None:
    key = hist_key(name, model)
    for b in SECONDS_BUCKETS:
        if value <= b:
            pipe.hincrby(key, f"le:{b}", 1)
    pipe.hincrbyfloat(key, "sum", value)
    pipe.hincrby(key, "count", 1)


def record_transition(pipe, before: str | None, rec) -> None:
    """Add to ``pipe`` (inside MULTI) the statistics of ``rec`` moving from ``before`` (None: created)."""
    after = rec.status
    if before == after:
        return
    fairness.record_transition(pipe, before, rec)
    if before is not None:
        pipe.hincrby(STATUS, f"{rec.model}\t{before}", -1)
    pipe.hincrby(STATUS, f"{rec.model}\t{after}", 1)
    if after == "queued":
        pipe.zadd(queued_key(rec.queue), {rec.id: rec.updated_at})
        if before == "running":
            pipe.hincrby(REDELIVERIES, rec.model, 1)
    elif before == "queued" or before is None:
        pipe.zrem(queued_key(rec.queue), rec.id)
    if after == "running" and before == "queued" and rec.queue_seconds is not None and rec.attempts == 1:
        _observe(pipe, "queue_seconds", rec.model, rec.queue_seconds)
    if after in ("succeeded", "failed", "canceled"):
        if rec.run_seconds is not None and after == "succeeded":
            _observe(pipe, "run_seconds", rec.model, rec.run_seconds)
            pipe.hincrby(STEPS, rec.model, int(rec.completed_steps))
        if after == "failed":
            code = (rec.error or {}).get("code", "unknown")
            pipe.hincrby(FAILURES, f"{rec.model}\t{code}", 1)


def record_deletion(pipe, rec) -> None:
    fairness.record_deletion(pipe, rec)
    pipe.hincrby(STATUS, f"{rec.model}\t{rec.status}", -1)
    pipe.zrem(queued_key(rec.queue), rec.id)
