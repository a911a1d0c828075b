"""Workers that die, jobs that kill them, cancels and duplicate deliveries: real Redis, S3 and worker processes.

Leases are 5 s and heart-beaten every 0.5 s (``faults.stack``), so a dead worker's job is requeued in seconds.
"""

from __future__ import annotations

import hashlib
import os
import signal

from tests.api.helpers import wait_status
from tests.support.services import WorkerProcess, wait_for

from .faults import MODEL, OUTPUTS_PER_JOB, attempts_in_logs, request, settled_attempts, slow, stack


def test_worker_sigkilled_mid_sampling_job_succeeds_exactly_once(redis_server, s3_endpoint, model_dir, tmp_path):
    with stack(redis_server, s3_endpoint, model_dir) as st:
        first = WorkerProcess(st.settings, tmp_path / "first.log", queues=st.settings.queue_for("ldm")).start()
        second = None
        try:
            job = st.submit(slow(12))
            wait_status(st.client, job["id"], {"running"}, pred=lambda j: j["progress"]["completed_steps"] >= 2)
            first.kill()
            # What an attempt killed mid-upload leaves behind; the attempt that finishes the job must sweep it.
            partial = f"tenants/alpha/jobs/{job['id']}/outputs/attempt-1/sample-0_flair.nii.gz"
            st.services.store.put_bytes(partial, b"cut short")
            second = WorkerProcess(st.settings, tmp_path / "second.log", queues=st.settings.queue_for("ldm")).start()
            done = wait_status(st.client, job["id"], {"succeeded", "failed"}, timeout=120)
            assert done["status"] == "succeeded", done["error"]
            assert done["attempts"] == 2
            ran = settled_attempts(tmp_path / "first.log", tmp_path / "second.log", jobs=[job["id"]])
            listed = sorted(o.key for o in st.services.jobs.get(job["id"]).outputs)
            assert sorted(st.stored(job["id"])) == listed and len(listed) == OUTPUTS_PER_JOB
            assert [(a.number, a.outcome) for a in sorted(ran, key=lambda a: a.number)] == [
                (1, None),
                (2, "succeeded"),
            ]  # the first attempt never ended: its worker was killed
        finally:
            first.kill()
            if second:
                second.stop()


def test_job_that_kills_its_worker_every_time_fails_worker_lost(redis_server, s3_endpoint, model_dir, tmp_path):
    """Each attempt's pool process is SIGKILLed mid-sampling, as the OOM killer would; the worker itself lives on.

    Celery's ``reject_on_worker_lost`` redelivers such a task for ever; the attempt cap (2 here, to save a
    pool-process start) must end it.
    """
    with stack(redis_server, s3_endpoint, model_dir, max_attempts=2) as st:
        w = WorkerProcess(st.settings, tmp_path / "worker.log", queues=st.settings.queue_for("ldm")).start()
        try:
            job = st.submit(slow(200))
            killed: set[int] = set()

            def kill_whoever_runs_it():
                rec = st.services.jobs.get(job["id"])
                if rec.terminal:
                    return rec
                if rec.status == "running" and rec.lease and rec.completed_steps >= 1:
                    pid = int(rec.lease.owner.rsplit(":", 1)[1])
                    if pid not in killed:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
                return None

            rec = wait_for(kill_whoever_runs_it, timeout=150, what="the job to end")
            assert rec.status == "failed" and rec.error["code"] == "worker_lost", rec.error
            assert rec.attempts == st.settings.max_attempts == len(killed)
            assert rec.outputs == [] and st.stored(job["id"]) == []
            # The worker survived its pool process dying at every attempt, and takes the next job.
            assert w.proc.poll() is None
            nxt = st.submit(request())
            assert wait_status(st.client, nxt["id"], {"succeeded", "failed"})["status"] == "succeeded"
        finally:
            w.stop()


def test_cancel_of_a_running_job_stops_within_one_step_and_the_worker_runs_the_next(
    redis_server, s3_endpoint, model_dir, tmp_path
):
    with stack(redis_server, s3_endpoint, model_dir) as st:
        w = WorkerProcess(st.settings, tmp_path / "worker.log", queues=st.settings.queue_for("ldm")).start()
        try:
            job = st.submit(slow(500))
            wait_status(st.client, job["id"], {"running"}, pred=lambda j: j["progress"]["completed_steps"] >= 2)
            r = st.client.post(f"/v1/jobs/{job['id']}/cancel", headers={"Authorization": "Bearer key-alpha"})
            assert r.status_code == 202 and r.json()["status"] == "canceling"
            at_cancel = r.json()["progress"]["completed_steps"]
            done = wait_status(st.client, job["id"], {"canceled", "succeeded", "failed"}, timeout=30)
            assert done["status"] == "canceled" and done["outputs"] == [] and st.stored(job["id"]) == []
            # The step running when the cancel arrived is the last one.
            assert done["progress"]["completed_steps"] <= at_cancel + 1
            nxt = st.submit(request())
            finished = wait_status(st.client, nxt["id"], {"succeeded", "failed"})
            assert finished["status"] == "succeeded" and finished["attempts"] == 1
            ran = {a.job_id: a for a in settled_attempts(tmp_path / "worker.log", jobs=[job["id"], nxt["id"]])}
            assert ran[job["id"]].outcome == "canceled" and ran[nxt["id"]].outcome == "succeeded"
            assert ran[nxt["id"]].start >= ran[job["id"]].end
        finally:
            w.stop()


def test_two_workers_never_run_one_job_at_once(redis_server, s3_endpoint, model_dir, tmp_path):
    """Every job is delivered twice (as Redis does after a visibility timeout) to two workers; one attempt runs."""
    with stack(redis_server, s3_endpoint, model_dir) as st:
        queue = st.settings.queue_for("ldm")
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        workers = [WorkerProcess(st.settings, log, queues=queue).start() for log in logs]
        try:
            jobs = [st.submit(request()) for _ in range(8)]
            for job in jobs:
                st.services.dispatcher.send(job["id"], "ldm")
            done = [wait_status(st.client, j["id"], {"succeeded", "failed"}, timeout=120) for j in jobs]
            assert all(d["status"] == "succeeded" and d["attempts"] == 1 for d in done), done
            assert all(len(st.stored(d["id"])) == OUTPUTS_PER_JOB for d in done)
            ran = settled_attempts(*logs, jobs=[j["id"] for j in jobs])
            by_job = {j["id"]: [a for a in ran if a.job_id == j["id"]] for j in jobs}
            assert all(len(a) == 1 and a[0].outcome == "succeeded" for a in by_job.values()), by_job
            assert len({a.worker for a in ran}) == 2, "both workers should have run jobs, or the test proves nothing"
            for a in ran:
                for b in ran:
                    if a is not b and a.job_id == b.job_id:
                        assert a.end <= b.start or b.end <= a.start, f"{a} overlaps {b}"
            refused = sum(log.read_text().count("not run: ") for log in logs)
            assert refused == len(jobs), "each duplicate delivery is refused by the claim"
        finally:
            for w in workers:
                w.stop()


def test_stalled_worker_coming_back_cannot_touch_the_winners_outputs(redis_server, s3_endpoint, model_dir, tmp_path):
    """Worker A stalls (SIGSTOP, like a paused VM) while writing outputs; its lease lapses and B runs the job to
    success. A then wakes, finishes writing and is fenced out: B's listed outputs must stay intact, and alone."""
    with stack(redis_server, s3_endpoint, model_dir) as st:
        queue = st.settings.queue_for("ldm")
        a = WorkerProcess(st.settings, tmp_path / "a.log", queues=queue).start()
        b = None
        try:
            # Four samples in four contrasts: 34 objects to write, a window of seconds after the last step.
            job = st.submit({"model": MODEL, "num_samples": 4, "seed": 5, "sampler": {"name": "dpm++", "steps": 5}})

            def writing() -> bool:
                rec = st.services.jobs.get(job["id"])
                return rec.status == "running" and rec.total_steps > 0 and rec.completed_steps == rec.total_steps

            wait_for(writing, timeout=120, interval=0.01, what="attempt 1 to finish sampling")
            os.killpg(a.proc.pid, signal.SIGSTOP)
            assert st.services.jobs.get(job["id"]).status == "running", "attempt 1 ended before it could be paused"
            b = WorkerProcess(st.settings, tmp_path / "b.log", queues=queue).start()
            done = wait_status(st.client, job["id"], {"succeeded", "failed"}, timeout=120)
            assert done["status"] == "succeeded" and done["attempts"] == 2, done["error"]
            os.killpg(a.proc.pid, signal.SIGCONT)
            wait_for(
                lambda: [x.outcome for x in attempts_in_logs(tmp_path / "a.log") if x.number == 1] != [None],
                timeout=60,
                what="the stale attempt to end",
            )
            assert [x.outcome for x in attempts_in_logs(tmp_path / "a.log")] == ["lease_lost"]
            rec = st.services.jobs.get(job["id"])
            assert len(rec.outputs) == 34
            assert sorted(st.stored(job["id"])) == sorted(o.key for o in rec.outputs)
            for o in rec.outputs:
                assert hashlib.sha256(st.services.store.get_bytes(o.key)).hexdigest() == o.sha256, o.name
        finally:
            if a.proc.poll() is None:
                os.killpg(a.proc.pid, signal.SIGCONT)
            a.stop()
            if b:
                b.stop()
