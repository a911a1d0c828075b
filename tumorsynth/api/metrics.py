"""``/metrics`` and ``/v1/queues``: read from Redis at scrape time (workers are other processes and machines).

Metric names follow celery-exporter where they overlap (``celery_queue_length``, ``celery_worker_up``), so existing
dashboards and alerts work; the rest are ``tumorsynth_*``. The alert rules in deploy/prometheus/ use these names.

With Redis out of reach ``/metrics`` answers 503 with Retry-After like every route that needs the job store (SPEC).
``/metrics/api`` is the API process's own view and never needs Redis to answer: ``tumorsynth_redis_up`` (as
redis_exporter's ``redis_up``). Scraped as a second job, it lets the alerts tell "Redis down" (it reads 0) from "API
down" (its scrape fails).
"""

from __future__ import annotations

import json
import logging
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..jobs import keys, stats
from ..models.families import FAMILIES
from ..pacs import outbox as pacs_outbox
from ..workers import gpu_memory
from ..workers.celery_app import queue_lists
from ..workers.supervision import WORKERS, worker_key

log = logging.getLogger(__name__)


def _split(field: bytes) -> tuple[str, str]:
    a, _, b = field.decode().partition("\t")
    return a, b


def queues_view(r, settings) -> list[dict]:
    """Per queue: depth (Celery's Redis list), oldest queued age, running jobs, workers online consuming it."""
    queues = settings.queues(FAMILIES)
    workers = online_workers(r, settings)
    running: dict[str, int] = {}
    leased = r.zrange(keys.LEASES, 0, -1)
    for raw in r.mget([keys.job(j.decode()) for j in leased]) if leased else []:
        if raw:
            rec = json.loads(raw)
            running[rec["queue"]] = running.get(rec["queue"], 0) + 1
    out = []
    now = time.time()
    for q in queues:
        oldest = r.zrange(stats.queued_key(q), 0, 0, withscores=True)
        out.append(
            {
                "name": q,
                "depth": sum(int(r.llen(name)) for name in queue_lists(q)),
                "queued_jobs": int(r.zcard(stats.queued_key(q))),
                "oldest_queued_seconds": round(now - oldest[0][1], 3) if oldest else 0.0,
                "running": running.get(q, 0),
                "workers_online": sum(1 for w in workers if q in w.get("queues", [])),
            }
        )
    return out


def online_workers(r, settings) -> list[dict]:
    horizon = time.time() - max(3 * settings.reaper_interval_seconds, settings.lease_seconds)
    ids = [w.decode() for w in r.zrangebyscore(WORKERS, horizon, "+inf")]
    infos = r.mget([worker_key(w) for w in ids]) if ids else []
    return [json.loads(raw) for raw in infos if raw]


class RedisCollector:
    def __init__(self, r, settings):
        self.r, self.settings = r, settings

    def collect(self):
        r = self.r
        jobs = GaugeMetricFamily("tumorsynth_jobs", "Jobs by current status and model", labels=["status", "model"])
        for field, n in r.hgetall(stats.STATUS).items():
            model, status = _split(field)
            jobs.add_metric([status, model], int(n))
        yield jobs

        qlen = GaugeMetricFamily("celery_queue_length", "Messages waiting in the Celery queue", labels=["queue_name"])
        oldest = GaugeMetricFamily(
            "tumorsynth_queue_oldest_age_seconds", "Age of the oldest queued job", labels=["queue_name"]
        )
        running = GaugeMetricFamily(
            "tumorsynth_queue_running_jobs", "Jobs running from the queue", labels=["queue_name"]
        )
        online = GaugeMetricFamily(
            "tumorsynth_workers_online", "Workers with a recent heartbeat", labels=["queue_name"]
        )
        for q in queues_view(r, self.settings):
            qlen.add_metric([q["name"]], q["depth"])
            oldest.add_metric([q["name"]], q["oldest_queued_seconds"])
            running.add_metric([q["name"]], q["running"])
            online.add_metric([q["name"]], q["workers_online"])
        yield from (qlen, oldest, running, online)

        up = GaugeMetricFamily("celery_worker_up", "1 while the worker heart-beats", labels=["hostname"])
        info = GaugeMetricFamily(
            "tumorsynth_worker_info",
            "What an online worker announced (always 1)",
            labels=["worker", "host", "queues", "gpus", "tumorsynth_version", "torch_version"],
        )
        installed = GaugeMetricFamily(
            "tumorsynth_worker_model_installed", "Checkpoints an online worker holds", labels=["worker", "model"]
        )
        for w in online_workers(r, self.settings):
            up.add_metric([w["id"]], 1)
            versions = w.get("versions") or {}
            info.add_metric(
                [
                    w["id"],
                    str(w.get("host", "")),
                    ",".join(w.get("queues", [])),
                    ",".join(g["name"] for g in w.get("gpus") or []) or "none",
                    versions.get("tumorsynth", ""),
                    versions.get("torch", ""),
                ],
                1,
            )
            for m in w.get("models") or []:
                installed.add_metric([w["id"], m["id"]], 1)
        yield from (up, info, installed)
        gpu = GaugeMetricFamily(
            "tumorsynth_worker_gpu_memory_bytes",
            "CUDA memory of the worker's pool processes "
            "(kind: allocated, reserved; total: the device's size); absent on CPU",
            labels=["worker", "device", "kind"],
        )
        for (worker, device, kind), n in sorted(gpu_memory.read_all(r).items()):
            gpu.add_metric([worker, device, kind], n)
        yield gpu

        for name, help_ in (
            ("queue_seconds", "Time from submission to the first attempt starting"),
            ("run_seconds", "Run time of succeeded jobs"),
        ):
            h = HistogramMetricFamily(f"tumorsynth_job_{name}", help_, labels=["model"])
            for key in r.scan_iter(match=stats.hist_key(name, "*"), count=100):
                model = key.decode().split(f"{name}:", 1)[1]
                raw = {k.decode(): float(v) for k, v in r.hgetall(key).items()}
                buckets = [(str(b), raw.get(f"le:{b}", 0.0)) for b in stats.SECONDS_BUCKETS]
                buckets.append(("+Inf", raw.get("count", 0.0)))
                h.add_metric([model], buckets, sum_value=raw.get("sum", 0.0))
            yield h

        steps = CounterMetricFamily(
            "tumorsynth_sampling_steps",
            "Sampling steps completed by succeeded jobs (rate() gives steps per second)",
            labels=["model"],
        )
        for model, n in r.hgetall(stats.STEPS).items():
            steps.add_metric([model.decode()], float(n))
        yield steps
        redeliveries = CounterMetricFamily(
            "tumorsynth_job_redeliveries", "Jobs requeued after their worker was lost", labels=["model"]
        )
        for model, n in r.hgetall(stats.REDELIVERIES).items():
            redeliveries.add_metric([model.decode()], float(n))
        yield redeliveries
        failures = CounterMetricFamily("tumorsynth_job_failures", "Failed jobs by error code", labels=["model", "code"])
        for field, n in r.hgetall(stats.FAILURES).items():
            model, code = _split(field)
            failures.add_metric([model, code], float(n))
        yield failures
        yield from webhook_backlog(r)
        yield from pacs_outbox.metrics(r)


def webhook_backlog(r, now: float | None = None):
    """Deliveries not yet done (due now or waiting for a retry), and how long the most overdue one has been due.

    A delivery being attempted is re-scored past its claim timeout, so only deliveries nobody is working on count as
    overdue: a growing figure means no worker runs the delivery loop, or it cannot keep up.
    """
    now = time.time() if now is None else now
    pending = GaugeMetricFamily(
        "tumorsynth_webhook_deliveries_pending",
        "Webhook deliveries not yet delivered or given up (due now or waiting for a retry)",
    )
    pending.add_metric([], r.zcard(keys.WEBHOOKS_DUE))
    first = r.zrange(keys.WEBHOOKS_DUE, 0, 0, withscores=True)
    overdue = GaugeMetricFamily(
        "tumorsynth_webhook_oldest_overdue_seconds",
        "How long the most overdue pending webhook delivery has been due without an attempt (0: none overdue)",
    )
    overdue.add_metric([], round(max(0.0, now - first[0][1]), 3) if first else 0.0)
    return [pending, overdue]


def redis_up(r) -> GaugeMetricFamily:
    """1 if a PING reached Redis (job store and broker) within the client's socket timeout, else 0."""
    try:
        up = int(bool(r.ping()))
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("metrics: Redis unreachable: %s: %s", type(exc).__name__, exc)
        up = 0
    g = GaugeMetricFamily("tumorsynth_redis_up", "1 if the API reached Redis (job store and broker) at this scrape")
    g.add_metric([], up)
    return g


def render_api_metrics(r) -> bytes:
    """``/metrics/api``: what this API process sees; answers while Redis is down."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([redis_up(r)]))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def render_metrics(r, settings) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(r, settings))
    return generate_latest(registry)
