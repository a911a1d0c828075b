"""Reconciliation (issue 14, #11): a job ``queued`` in the store whose broker message is gone is sent again by the
reaper, once per loss and at most ``max_attempts`` times, and runs exactly once. Before, such a job (left by the split
brain of two embedded Redis servers on one append-only file) stayed queued for good.

Real Redis, S3 and worker processes; the lost message is made by deleting the queue's Redis lists, as the split
brain's second Redis did.
"""

from __future__ import annotations

import time

from tests.api.helpers import wait_status
from tests.conftest import ALPHA
from tests.support.services import WorkerProcess
from tumorsynth.workers.celery_app import CeleryDispatcher, create_celery, queue_lists
from tumorsynth.workers.context import WorkerContext
from tumorsynth.workers.reconcile import broker_job_ids, reconcile_once

from .faults import request, settled_attempts, stack


def drop_messages(r, queue: str) -> None:
    r.delete(*queue_lists(queue))


def test_split_brain_lost_message_is_resent_and_the_job_succeeds_exactly_once(
    redis_server, s3_endpoint, model_dir, tmp_path
):
    with stack(redis_server, s3_endpoint, model_dir) as st:
        queue = st.settings.queue_for("ldm")
        r = st.services.redis
        job = st.submit(request())
        assert job["id"] in broker_job_ids(r, queue)
        drop_messages(r, queue)  # accepted, queued in the store, on no broker queue: what the split brain left
        assert job["id"] not in broker_job_ids(r, queue)
        w = WorkerProcess(st.settings, tmp_path / "worker.log", queues=queue).start()
        try:
            done = wait_status(st.client, job["id"], {"succeeded", "failed"}, timeout=120)
            assert done["status"] == "succeeded", done["error"]
            assert done["attempts"] == 1 and st.services.jobs.get(job["id"]).resends == 1
            ran = settled_attempts(tmp_path / "worker.log", jobs=[job["id"]])
            assert [(a.number, a.outcome) for a in ran if a.job_id == job["id"]] == [(1, "succeeded")]
            time.sleep(2 * st.settings.lease_seconds)  # more reconciliation passes: nothing is sent again
            assert st.services.jobs.get(job["id"]).resends == 1 and job["id"] not in broker_job_ids(r, queue)
            assert "sent again" in (tmp_path / "worker.log").read_text()
        finally:
            w.stop()


def test_only_jobs_without_a_message_are_resent_and_a_job_lost_too_often_fails(redis_server, s3_endpoint, model_dir):
    """No worker consumes the queue: the pass is called directly, on the real broker lists."""
    with stack(redis_server, s3_endpoint, model_dir, lease_seconds=1.0, max_attempts=2) as st:
        queue = st.settings.queue_for("ldm")
        r = st.services.redis
        kept, lost = st.submit(request()), st.submit(request())
        ctx = WorkerContext(st.settings)
        dispatcher = CeleryDispatcher(create_celery(st.settings), st.settings)
        assert reconcile_once(ctx, dispatcher, [queue]) == []  # both younger than the grace (lease_seconds)
        time.sleep(1.2)
        assert reconcile_once(ctx, dispatcher, [queue]) == []  # both have their message
        for name in queue_lists(queue):  # its message only (the tenant's second job: on priority level 1)
            for message in r.lrange(name, 0, -1):
                if lost["id"].encode() in message:
                    r.lrem(name, 0, message)
        time.sleep(1.2)
        assert reconcile_once(ctx, dispatcher, [queue]) == [lost["id"]]
        assert reconcile_once(ctx, dispatcher, [queue]) == []  # its new message is there now
        assert broker_job_ids(r, queue) >= {kept["id"], lost["id"]}
        for _ in range(2):  # lost twice more: the cap (max_attempts = 2) ends it
            drop_messages(r, queue)
            time.sleep(1.2)
            reconcile_once(ctx, dispatcher, [queue])
        rec = ctx.jobs.get(lost["id"])
        assert rec.status == "failed" and rec.error["code"] == "lost_in_queue" and rec.resends == 2
        assert ctx.jobs.get(kept["id"]).status == "queued" and ctx.jobs.get(kept["id"]).resends == 2


def test_a_batch_whose_planning_task_was_lost_is_planned_once(redis_server, s3_endpoint, model_dir):
    """The same for a batch in ``planning``: its ``plan_batch`` message is sent again, and planned once."""
    from tumorsynth.jobs.batch_planning import BatchPlanner
    from tumorsynth.workers.reconcile import BATCH_ID, reconcile_batches

    with stack(redis_server, s3_endpoint, model_dir, lease_seconds=1.0, max_attempts=2) as st:
        queue = st.settings.queue_for("ldm")
        st.settings.family_queues["vqgan"] = queue  # the class-conditioned batch below plans on this queue too
        r = st.services.redis
        body = {"model": "vqgan/tiny@1", "class_counts": {"LGG": 1, "HGG": 0}, "total_per_class": 2, "seed": 3}
        batch = st.client.post("/v1/batches", json=body, headers=ALPHA).json()
        assert batch["status"] == "planning" and batch["id"] in broker_job_ids(r, queue, BATCH_ID)
        drop_messages(r, queue)
        ctx = WorkerContext(st.settings)
        dispatcher = CeleryDispatcher(create_celery(st.settings), st.settings)
        time.sleep(1.2)
        assert reconcile_batches(ctx, dispatcher, [queue]) == [batch["id"]]
        assert reconcile_batches(ctx, dispatcher, [queue]) == []  # its task is on the queue again
        planner = BatchPlanner(st.services.batches, max_attempts=2)
        assert planner.plan(batch["id"]) == "planned" and planner.plan(batch["id"]) == "not planning"
        planned = st.client.get(f"/v1/batches/{batch['id']}", headers=ALPHA).json()
        assert planned["status"] == "running" and len(planned["jobs"]) == 3, planned
        time.sleep(1.2)
        assert reconcile_batches(ctx, dispatcher, [queue]) == []  # planned: nothing to reconcile


def test_a_planning_task_that_keeps_killing_its_worker_fails_the_batch(redis_server, s3_endpoint, model_dir):
    from tumorsynth.jobs.batch_planning import BatchPlanner

    with stack(redis_server, s3_endpoint, model_dir) as st:
        body = {"model": "ldm/tiny@1", "class_counts": {"LGG": 1, "HGG": 2}, "target": "balance", "seed": 3}
        batch = st.client.post("/v1/batches", json=body, headers=ALPHA).json()

        def died(rec):  # two planning tasks started and never ended: their worker was killed each time
            rec.plan_attempts = 2
            return rec

        st.services.batches.update(batch["id"], died)
        assert BatchPlanner(st.services.batches, max_attempts=2).plan(batch["id"]) == "failed"
        failed = st.client.get(f"/v1/batches/{batch['id']}", headers=ALPHA).json()
        assert failed["status"] == "failed" and failed["jobs"] == []
        assert failed["error"]["code"] == "planning_failed" and "2 times" in failed["error"]["message"]
