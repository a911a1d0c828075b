"""The job store's state machine against a real Redis: claims, fencing, leases, reaping, idempotency."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from tumorsynth.errors import InvalidRequest, LeaseLost, NotFound
from tumorsynth.jobs import keys
from tumorsynth.jobs.records import JobRecord, new_id
from tumorsynth.jobs.store import IdempotencyBinding, JobStore


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    """A Redis of this module's own: the suite's shared one may still have a reaper of another test's worker on it,
    which takes a lapsed lease between this module's sleep and its look at the lapsed set (seen once in a full run)."""
    from tumorsynth.embedded.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def store(private_redis) -> JobStore:
    return JobStore(redis.Redis.from_url(private_redis.url))


def make(store: JobStore, tenant: str = "t1") -> JobRecord:
    rec = JobRecord(id=new_id("job"), tenant=tenant, model="ldm/x@1", family="ldm", queue="gpu", request={})
    store.create(rec)
    return rec


def test_claim_is_exclusive_and_counts_attempts(store):
    rec = make(store)
    a = store.claim(rec.id, "w1", lease_seconds=30, max_attempts=3)
    b = store.claim(rec.id, "w2", lease_seconds=30, max_attempts=3)
    assert a.record is not None and a.record.attempts == 1 and a.record.status == "running"
    assert b.record is None and b.reason == "leased to a live worker"


def test_stale_attempt_is_fenced_out_after_takeover(store):
    rec = make(store)
    first = store.claim(rec.id, "w1", lease_seconds=0.05, max_attempts=3).record
    time.sleep(0.1)
    second = store.claim(rec.id, "w2", lease_seconds=30, max_attempts=3).record
    assert second.attempts == 2
    with pytest.raises(LeaseLost):
        store.progress(rec.id, first.attempts, 5, 10, 30)
    with pytest.raises(LeaseLost):
        store.finish(rec.id, first.attempts, "succeeded")
    assert store.finish(rec.id, second.attempts, "succeeded").status == "succeeded"
    assert store.claim(rec.id, "w3", 30, 3).reason == "already succeeded"


def test_reaper_requeues_lapsed_then_fails_after_the_cap(store):
    rec = make(store)
    for attempt in (1, 2):
        assert store.claim(rec.id, "w", lease_seconds=0.01, max_attempts=2).record.attempts == attempt
        time.sleep(0.1)  # well past the 10 ms lease
        assert rec.id in store.lapsed()
        assert store.release_lapsed(rec.id, max_attempts=2).status == ("queued" if attempt == 1 else "failed")
    final = store.get(rec.id)
    assert final.status == "failed" and final.error["code"] == "worker_lost" and rec.id not in store.lapsed()


def test_cancel_queued_is_immediate_and_running_is_cooperative(store):
    queued, running = make(store), make(store)
    assert store.cancel("t1", queued.id).status == "canceled"
    token = store.claim(running.id, "w", 30, 3).record.attempts
    assert store.cancel("t1", running.id).status == "canceling"
    assert store.progress(running.id, token, 1, 10, 30).status == "canceling"
    assert store.finish(running.id, token, "canceled").status == "canceled"
    assert store.claim(queued.id, "w", 30, 3).record is None


def test_other_tenants_jobs_are_not_found(store):
    rec = make(store, tenant="t1")
    with pytest.raises(NotFound):
        store.get_for_tenant("t2", rec.id)
    with pytest.raises(NotFound):
        store.cancel("t2", rec.id)


def test_idempotency_binds_key_to_body(store):
    key = uuid.uuid4().hex
    assert store.reserve_idempotency("t1", key, "body-a", "job_1", ttl=60) is None
    assert store.reserve_idempotency("t1", key, "body-a", "job_2", ttl=60) == IdempotencyBinding("job_1", True)
    assert store.reserve_idempotency("t2", key, "body-a", "job_3", ttl=60) is None  # keys are per tenant
    with pytest.raises(InvalidRequest):
        store.reserve_idempotency("t1", key, "body-b", "job_4", ttl=60)
    store.confirm_idempotency("t1", key, "body-a", "job_1", ttl=600)
    assert store.reserve_idempotency("t1", key, "body-a", "job_5", ttl=60) == IdempotencyBinding("job_1", False)
    assert 60 < store.r.ttl(keys.idempotency("t1", key)) <= 600


def test_a_released_idempotency_key_can_be_claimed_again(store):
    key = uuid.uuid4().hex
    assert store.reserve_idempotency("t1", key, "body-a", "job_1", ttl=60) is None
    store.release_idempotency("t1", key)
    assert store.reserve_idempotency("t1", key, "body-b", "job_2", ttl=60) is None


def test_invalid_transitions_are_refused():
    rec = JobRecord(id="job_x", tenant="t", model="m", family="ldm", queue="gpu", request={}, status="succeeded")
    with pytest.raises(ValueError):
        rec.move("running")
