"""The metrics the alert rules in deploy/prometheus/ need beyond the job counts: Redis reachability, the webhook
backlog and each GPU's size. Read from a Redis of the test's own (the session's worker would deliver the webhooks)."""

from __future__ import annotations

import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tumorsynth.api.metrics import render_api_metrics, render_metrics
from tumorsynth.embedded.redis_server import RedisServer, free_port
from tumorsynth.jobs.outbox import Outbox
from tumorsynth.settings import Settings
from tumorsynth.workers import gpu_memory


@pytest.fixture()
def r(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield redis.Redis.from_url(server.url)
    server.stop()


def scrape(r, api: bool = False) -> dict:
    text = (render_api_metrics(r) if api else render_metrics(r, Settings(redis_url="redis://unused"))).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def delivery(n: int, state: str, due: float) -> dict:
    return {"id": f"msg_{n}", "job_id": f"job_{n}", "state": state, "next_attempt_at": due}


def test_redis_up_and_the_webhook_backlog(r):
    assert scrape(r, api=True) == {("tumorsynth_redis_up", ()): 1}
    m = scrape(r)
    assert m[("tumorsynth_webhook_deliveries_pending", ())] == 0
    assert m[("tumorsynth_webhook_oldest_overdue_seconds", ())] == 0
    outbox = Outbox(r)
    outbox.save(delivery(1, "pending", time.time() - 120))  # due two minutes ago, nobody attempted it
    outbox.save(delivery(2, "pending", time.time() + 600))  # waiting for its next retry: pending, not overdue
    m = scrape(r)
    assert m[("tumorsynth_webhook_deliveries_pending", ())] == 2
    assert 119 <= m[("tumorsynth_webhook_oldest_overdue_seconds", ())] < 180
    outbox.save(delivery(1, "delivered", time.time()))
    m = scrape(r)
    assert m[("tumorsynth_webhook_deliveries_pending", ())] == 1
    assert m[("tumorsynth_webhook_oldest_overdue_seconds", ())] == 0


def test_unreachable_redis_is_redis_up_zero_on_the_api_view_and_an_error_on_the_full_scrape():
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1, socket_timeout=1)
    assert scrape(dead, api=True) == {("tumorsynth_redis_up", ()): 0}
    with pytest.raises(redis.exceptions.ConnectionError):  # the route turns it into a 503 with Retry-After
        scrape(dead)


def test_gpu_total_is_the_device_size_not_a_sum_over_pool_processes(r):
    gib = 2**30
    gpu_memory.publish(
        r,
        "gpuhost:1",
        11,
        [{"device": "cuda:0", "allocated": 2 * gib, "reserved": 3 * gib, "total": 80 * gib}],
        ttl_seconds=30,
    )
    gpu_memory.publish(
        r,
        "gpuhost:1",
        12,
        [{"device": "cuda:0", "allocated": 1 * gib, "reserved": 2 * gib, "total": 80 * gib}],
        ttl_seconds=30,
    )
    gpu_memory.publish(r, "oldhost:1", 13, [{"device": "cuda:0", "allocated": gib, "reserved": gib}], ttl_seconds=30)
    m = scrape(r)
    key = lambda worker, kind: (
        "tumorsynth_worker_gpu_memory_bytes",
        (("device", "cuda:0"), ("kind", kind), ("worker", worker)),
    )
    assert m[key("gpuhost:1", "total")] == 80 * gib and m[key("gpuhost:1", "reserved")] == 5 * gib
    assert key("oldhost:1", "total") not in m  # no size reported: no series (a 0 would make the ratio infinite)
