"""The PACS outbox on a real Redis: only a succeeded job that asked for it queues a delivery, in the transaction of
its success; a claim that lapses (its worker died mid-send) makes the delivery due again; failed attempts back off,
then fail the delivery and leave the job as it was; /metrics counts them."""

from __future__ import annotations

import io
import time
import zipfile

import pytest
import redis

from tests.support.dicom import free_port
from tumorsynth.embedded.redis_server import RedisServer
from tumorsynth.jobs.records import JobRecord, StoredOutput
from tumorsynth.jobs.store import JobStore
from tumorsynth.pacs.deliver import PacsDeliverer
from tumorsynth.pacs.outbox import DUE, PacsOutbox, metrics
from tumorsynth.settings import Settings
from tumorsynth.storage.local import LocalStore


@pytest.fixture(scope="module")
def r(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("outbox-redis")).start()
    yield redis.Redis.from_url(server.url)
    server.stop()


@pytest.fixture()
def jobs(r):
    r.flushdb()
    return JobStore(r)


def succeed(jobs: JobStore, request: dict, outputs=(), status="succeeded") -> JobRecord:
    rec = JobRecord(
        id=f"job_{time.time_ns():032x}"[-36:],
        tenant="alpha",
        model="ldm/tiny@1",
        family="ldm",
        queue="gpu",
        request={"model": "ldm/tiny@1"} | request,
    )
    jobs.create(rec)
    claim = jobs.claim(rec.id, "w1", 30, 3)
    return jobs.finish(rec.id, claim.record.attempts, status, outputs=list(outputs))


@pytest.mark.parametrize(
    ("request_", "status", "queued"),
    [
        ({"formats": ["nifti", "dicom"], "send_to": "pacs"}, "succeeded", True),
        ({"formats": ["nifti", "dicom"]}, "succeeded", False),
        ({"formats": ["nifti", "dicom"], "send_to": "pacs"}, "failed", False),
    ],
)
def test_only_a_succeeded_job_that_asked_queues_a_delivery(jobs, r, request_, status, queued):
    rec = succeed(jobs, request_, status=status)
    assert (PacsOutbox(r).get(rec.id) is not None) is queued
    assert r.zscore(DUE, rec.id) is not None if queued else r.zcard(DUE) == 0


def test_a_lapsed_claim_is_due_again(jobs, r):
    rec = succeed(jobs, {"formats": ["nifti", "dicom"], "send_to": "pacs"})
    outbox = PacsOutbox(r)
    assert [d["job_id"] for d in outbox.claim_due(claim_seconds=0.3)] == [rec.id]
    assert outbox.claim_due(claim_seconds=0.3) == []  # claimed: no second worker sends it meanwhile
    time.sleep(0.4)  # the claiming worker died before saving an outcome
    assert [d["job_id"] for d in outbox.claim_due(claim_seconds=0.3)] == [rec.id]


def test_failed_attempts_back_off_then_fail_the_delivery_not_the_job(jobs, r, tmp_path):
    store = LocalStore(tmp_path / "store", base_url="http://testserver", signing_key=b"k" * 32)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("sample-0/t1/IM00001.dcm", b"not sent: nothing listens")
    store.put_bytes("tenants/alpha/jobs/x/outputs/dicom.zip", buf.getvalue(), "application/zip")
    out = StoredOutput(
        name="dicom.zip",
        key="tenants/alpha/jobs/x/outputs/dicom.zip",
        modality="dicom",
        sample_index=None,
        kind="dicom",
        size=len(buf.getvalue()),
        sha256="0" * 64,
    )
    rec = succeed(jobs, {"formats": ["nifti", "dicom"], "send_to": "pacs"}, outputs=[out])
    port = free_port()
    settings = Settings(
        pacs_destinations={"alpha": {"kind": "dimse", "host": "127.0.0.1", "port": port, "called_ae": "PACS"}},
        pacs_max_attempts=2,
        pacs_backoff_seconds=5.0,
        pacs_timeout_seconds=2,
    )
    deliverer = PacsDeliverer(r, store, settings)
    (d,) = deliverer.outbox.claim_due(deliverer.claim_seconds)
    first = deliverer.attempt(d)
    assert first["state"] == "pending" and first["attempts"] == 1
    assert 4.5 < first["next_attempt_at"] - time.time() <= 5.0  # backoff before the next attempt
    assert f"PACS@127.0.0.1:{port}" in first["last_error"]
    second = deliverer.attempt(first)
    assert second["state"] == "failed" and r.zcard(DUE) == 0
    job = jobs.get(rec.id)
    assert job.status == "succeeded" and [o.name for o in job.outputs] == ["dicom.zip"]
    assert job.delivery["state"] == "failed" and job.delivery["attempts"] == 2
    families = {f.name: {tuple(s.labels.values()): s.value for s in f.samples} for f in metrics(r)}
    assert families["tumorsynth_pacs_deliveries"][("failed",)] == 1
    assert families["tumorsynth_pacs_delivery_attempts"][("error",)] == 2
    assert families["tumorsynth_pacs_deliveries_pending"][()] == 0
