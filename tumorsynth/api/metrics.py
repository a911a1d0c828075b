"""``/metrics`` and ``/v1/queues``: read from Redis at scrape time (workers are other processes and machines).

Metric names follow celery-exporter where they overlap (``celery_queue_length``, ``celery_worker_up``), so existing
dashboards and alerts work; the rest are ``tumorsynth_*``.
"""

from __future__ import annotations

import json
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..jobs import stats
from ..workers import gpu_memory
from ..workers.supervision import WORKERS, worker_key


def _split(field: bytes) -> tuple[str, str]:
    a, _, b = field.decode().partition("\t")
    return a, b


def queues_view(r, settings) -> list[dict]:
    """Per queue: depth (Celery's Redis list), oldest queued age, running jobs, workers online consuming it."""
    queues = sorted(set(settings.family_queues.values()))
    workers = online_workers(r, settings)
    running: dict[str, int] = {}
    for raw in r.mget([f"ts:job:{j.decode()}" for j in r.zrange("ts:leases", 0, -1)]) if r.zcard("ts:leases") else []:
        if raw:
            rec = json.loads(raw)
            running[rec["queue"]] = running.get(rec["queue"], 0) + 1
    out = []
    now = time.time()
    for q in queues:
        oldest = r.zrange(stats.queued_key(q), 0, 0, withscores=True)
        out.append({
            "name": q, "depth": int(r.llen(q)), "queued_jobs": int(r.zcard(stats.queued_key(q))),
            "oldest_queued_seconds": round(now - oldest[0][1], 3) if oldest else 0.0,
            "running": running.get(q, 0),
            "workers_online": sum(1 for w in workers if q in w.get("queues", [])),
        })
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
        oldest = GaugeMetricFamily("tumorsynth_queue_oldest_age_seconds", "Age of the oldest queued job",
                                   labels=["queue_name"])
        running = GaugeMetricFamily("tumorsynth_queue_running_jobs", "Jobs running from the queue",
                                    labels=["queue_name"])
        online = GaugeMetricFamily("tumorsynth_workers_online", "Workers with a recent heartbeat",
                                   labels=["queue_name"])
        for q in queues_view(r, self.settings):
            qlen.add_metric([q["name"]], q["depth"])
            oldest.add_metric([q["name"]], q["oldest_queued_seconds"])
            running.add_metric([q["name"]], q["running"])
            online.add_metric([q["name"]], q["workers_online"])
        yield from (qlen, oldest, running, online)

        up = GaugeMetricFamily("celery_worker_up", "1 while the worker heart-beats", labels=["hostname"])
        info = GaugeMetricFamily("tumorsynth_worker_info", "What an online worker announced (always 1)",
                                 labels=["worker", "host", "queues", "gpus", "tumorsynth_version", "torch_version"])
        installed = GaugeMetricFamily("tumorsynth_worker_model_installed", "Checkpoints an online worker holds",
                                      labels=["worker", "model"])
        for w in online_workers(r, self.settings):
            up.add_metric([w["id"]], 1)
            versions = w.get("versions") or {}
            info.add_metric([w["id"], str(w.get("host", "")), ",".join(w.get("queues", [])),
                             ",".join(g["name"] for g in w.get("gpus") or []) or "none",
                             versions.get("tumorsynth", ""), versions.get("torch", "")], 1)
            for m in w.get("models") or []:
                installed.add_metric([w["id"], m["id"]], 1)
        yield from (up, info, installed)
        gpu = GaugeMetricFamily("tumorsynth_worker_gpu_memory_bytes", "CUDA memory of the worker's pool processes "
                                "(torch.cuda.memory_allocated / memory_reserved); absent on CPU",
                                labels=["worker", "device", "kind"])
        for (worker, device, kind), n in sorted(gpu_memory.read_all(r).items()):
            gpu.add_metric([worker, device, kind], n)
        yield gpu

        for name, help_ in (("queue_seconds", "Time from submission to the first attempt starting"),
                            ("run_seconds", "Run time of succeeded jobs")):
            h = HistogramMetricFamily(f"tumorsynth_job_{name}", help_, labels=["model"])
            for key in r.scan_iter(match=stats.hist_key(name, "*"), count=100):
                model = key.decode().split(f"{name}:", 1)[1]
                raw = {k.decode(): float(v) for k, v in r.hgetall(key).items()}
                buckets = [(str(b), raw.get(f"le:{b}", 0.0)) for b in stats.SECONDS_BUCKETS]
                buckets.append(("+Inf", raw.get("count", 0.0)))
                h.add_metric([model], buckets, sum_value=raw.get("sum", 0.0))
            yield h

        steps = CounterMetricFamily("tumorsynth_sampling_steps", "Sampling steps completed by succeeded jobs "
                                    "(rate() gives steps per second)", labels=["model"])
        for model, n in r.hgetall(stats.STEPS).items():
            steps.add_metric([model.decode()], float(n))
        yield steps
        redeliveries = CounterMetricFamily("tumorsynth_job_redeliveries", "Jobs requeued after their worker was lost",
                                           labels=["model"])
        for model, n in r.hgetall(stats.REDELIVERIES).items():
            redeliveries.add_metric([model.decode()], float(n))
        yield redeliveries
        failures = CounterMetricFamily("tumorsynth_job_failures", "Failed jobs by error code",
                                       labels=["model", "code"])
        for field, n in r.hgetall(stats.FAILURES).items():
            model, code = _split(field)
            failures.add_metric([model, code], float(n))
        yield failures


def render_metrics(r, settings) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(r, settings))
    return generate_latest(registry)
