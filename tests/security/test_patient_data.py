"""Header fields that can carry patient data never reach an output, a sidecar, the job's JSON or a log.

The job (``conftest.alpha_job``) was made from a mask whose descrip, aux_file, db_name, intent_name and an
extension name a fake patient. The stored input still holds them (it is the upload, kept until the lifecycle rule
expires it), which shows that the search below finds them where they are.
"""

from __future__ import annotations

import gzip
import json

import httpx
import nibabel as nib

from tests.conftest import ALPHA
from tumorsynth.storage.keys import job_prefix

from .conftest import PATIENT_STRINGS


def plain(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def found(data: bytes | str) -> list[str]:
    text = data if isinstance(data, str) else data.decode("latin-1")
    return [s for s in PATIENT_STRINGS if s in text]


def test_the_upload_held_the_patient_data(alpha_job, app):
    job, _ = alpha_job
    store = app.state.services.store
    (key,) = [o.key for o in store.list(job_prefix("alpha", job["id"]) + "inputs/")]
    assert found(plain(store.get_bytes(key))) == PATIENT_STRINGS


def test_no_output_or_sidecar_holds_it(alpha_job, app):
    job, _ = alpha_job
    store = app.state.services.store
    keys = [o.key for o in store.list(job_prefix("alpha", job["id"]) + "outputs/")]
    assert len(keys) == len(job["outputs"]) >= 10  # four contrasts and the mask, each with a sidecar
    for key in keys:
        data = plain(store.get_bytes(key))
        assert found(data) == [], key
        if key.endswith(".nii.gz"):
            hdr = nib.Nifti1Image.from_bytes(data).header
            for name in ("descrip", "aux_file", "db_name", "intent_name"):
                assert bytes(hdr[name]).strip(b"\x00") == b"", f"{key}: {name}"
            assert len(hdr.extensions) == 0, key
        else:
            assert json.loads(data)["Synthetic"] is True


def test_what_the_client_downloads_holds_none_of_it(alpha_job):
    job, _ = alpha_job
    for out in job["outputs"]:
        assert found(plain(httpx.get(out["url"]).raise_for_status().content)) == [], out["name"]


def test_the_job_json_holds_none_of_it(alpha_job, sec_client):
    job, _ = alpha_job
    now = sec_client.get(f"/v1/jobs/{job['id']}", headers=ALPHA)
    listed = sec_client.get("/v1/jobs?limit=200", headers=ALPHA)
    events = sec_client.get(f"/v1/jobs/{job['id']}/events", headers=ALPHA)
    for r in (now, listed, events):
        assert r.status_code == 200 and found(r.text) == []


def test_no_log_holds_it(alpha_job, worker):
    _, api_log = alpha_job
    assert "POST http://testserver/v1/jobs" in api_log, "the capture saw the submission"
    worker_log = worker.log_path.read_text()
    assert alpha_job[0]["id"] in worker_log, "the worker log covers this job"
    assert found(api_log) == [] and found(worker_log) == []
