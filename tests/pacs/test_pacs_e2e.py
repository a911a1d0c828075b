"""Sending a job's DICOM series to a real Orthanc (Debian's, on loopback, started here with a generated config).

The series arrives with its SYNTHETIC description and the right number of instances, listed by Orthanc's REST API;
a wrong AE title and an unreachable PACS fail the delivery after its retries, never the job, whose NIfTI outputs stay.
The worker and its delivery loop run on a Redis of their own, so the session worker's loop stays out of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import submit, wait_status
from tests.api.test_jobs_e2e import fetch
from tests.conftest import ALPHA, BETA, KEYS, make_settings
from tests.support.dicom import Orthanc, free_port
from tests.support.services import WorkerProcess, wait_for
from tests.support.volumes import load, mask_bytes
from tumorsynth.embedded.redis_server import RedisServer

SHAPE = (40, 44, 30)
GAMMA = {"Authorization": "Bearer key-gamma"}
EPS = {"Authorization": "Bearer key-eps"}
# Debian's orthanc-dicomweb; another copy of the plugin can be named with ORTHANC_DICOMWEB_PLUGIN
DICOMWEB_PLUGIN = Path(os.environ.get("ORTHANC_DICOMWEB_PLUGIN", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), plugins=[DICOMWEB_PLUGIN] if DICOMWEB_PLUGIN.exists() else [])
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def pacs_client(s3_endpoint, model_dir, orthanc, tmp_path_factory):
    from fastapi.testclient import TestClient

    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    redis_server = RedisServer(tmp_path_factory.mktemp("pacs-redis")).start()
    dimse = {"kind": "dimse", "host": "127.0.0.1", "port": orthanc.dicom_port, "calling_ae": "TSYNTH"}
    settings = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        api_keys=KEYS + ",gamma:key-gamma,delta:key-delta,eps:key-eps",
        pacs_destinations={
            "alpha": dimse | {"called_ae": "ORTHANC"},
            "beta": dimse | {"called_ae": "NOT-ORTHANC"},
            "gamma": dimse | {"called_ae": "ORTHANC", "port": free_port()},
            "delta": {"kind": "stow-rs", "url": f"{orthanc.url}/dicom-web"},
            "eps": {"kind": "stow-rs", "url": f"{orthanc.url}/no-such-dicom-web"},
        },
        pacs_max_attempts=2,
        pacs_backoff_seconds=0.3,
        pacs_timeout_seconds=10,
    )
    make_store(settings).ensure_bucket()
    worker = WorkerProcess(settings, tmp_path_factory.mktemp("pacs-logs") / "worker.log").start()
    try:
        with TestClient(create_app(settings)) as client:
            yield client
    finally:
        worker.stop()
        redis_server.stop()


def pacs_job(client, headers=ALPHA) -> dict:
    request = {
        "model": "ldm/tiny@1",
        "seed": 4,
        "sampler": {"name": "dpm++", "steps": 5},
        "modalities": ["t1", "flair"],
        "formats": ["nifti", "dicom"],
        "send_to": "pacs",
    }
    r = submit(client, request, {"mask": mask_bytes(SHAPE)}, headers=headers)
    assert r.status_code == 202, r.text
    done = wait_status(client, r.json()["id"], {"succeeded", "failed"}, headers=headers)
    assert done["status"] == "succeeded", done["error"]
    return done


def wait_delivery(client, job_id: str, headers=ALPHA) -> dict:
    def finished():
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        return job if job["delivery"] and job["delivery"]["state"] != "pending" else None

    return wait_for(finished, timeout=60, interval=0.2, what="the PACS delivery to finish")


def orthanc_series(orthanc: Orthanc, patient_id: str) -> list[dict]:
    found = httpx.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Series", "Query": {"PatientID": patient_id}, "Expand": True},
        timeout=10,
    )
    found.raise_for_status()
    return found.json()


def test_series_arrive_in_orthanc_marked_synthetic(pacs_client, orthanc):
    job = pacs_job(pacs_client)
    assert job["delivery"]["state"] in ("pending", "delivered")
    done = wait_delivery(pacs_client, job["id"])
    delivery = done["delivery"]
    assert delivery["state"] == "delivered", delivery
    assert delivery["instances"] == 2 * SHAPE[2] + 1 and delivery["attempts"] == 1
    assert delivery["destination"] == f"DIMSE ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    series = {s["MainDicomTags"]["SeriesDescription"]: len(s["Instances"]) for s in orthanc_series(orthanc, job["id"])}
    assert series == {
        "SYNTHETIC T1 sample 0": SHAPE[2],
        "SYNTHETIC FLAIR sample 0": SHAPE[2],
        "SYNTHETIC tumour mask (BraTS labels)": 1,
    }
    (patient,) = [p for p in orthanc.get("/patients?expand") if p["MainDicomTags"]["PatientID"] == job["id"]]
    assert patient["MainDicomTags"]["PatientName"] == "SYNTHETIC^tumorsynth"
    metrics = pacs_client.get("/metrics").text
    assert 'tumorsynth_pacs_deliveries_total{outcome="delivered"} 1.0' in metrics


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        (BETA, "association rejected"),  # Orthanc checks the called AE title
        (GAMMA, "association aborted"),  # nothing listens on the port
        (EPS, "HTTP 404"),  # a STOW-RS URL where there is no DICOMweb service
    ],
    ids=["wrong-ae-title", "unreachable", "wrong-stow-url"],
)
def test_a_bad_destination_fails_the_delivery_not_the_job(pacs_client, orthanc, headers, says):
    job = pacs_job(pacs_client, headers)
    done = wait_delivery(pacs_client, job["id"], headers)
    delivery = done["delivery"]
    assert delivery["state"] == "failed" and delivery["attempts"] == 2, delivery
    assert says in delivery["last_error"], delivery
    assert ("called AE title" in delivery["last_error"]) is (headers is not EPS)  # what to check is named
    assert done["status"] == "succeeded" and not orthanc_series(orthanc, job["id"])
    names = {o["name"] for o in done["outputs"]}
    assert {"sample-0_t1.nii.gz", "sample-0_flair.nii.gz", "mask.nii.gz", "dicom.zip"} <= names
    assert load(fetch(pacs_client, job["id"], "sample-0_flair.nii.gz", headers=headers)).shape == SHAPE
    metrics = pacs_client.get("/metrics").text
    assert 'tumorsynth_pacs_deliveries_total{outcome="failed"}' in metrics


@pytest.mark.skipif(
    not DICOMWEB_PLUGIN.exists(),
    reason="Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) is not installed; make test installs it",
)
def test_stow_rs_to_orthancs_dicomweb(pacs_client, orthanc):
    headers = {"Authorization": "Bearer key-delta"}
    job = pacs_job(pacs_client, headers)
    delivery = wait_delivery(pacs_client, job["id"], headers)["delivery"]
    assert delivery["state"] == "delivered", delivery
    assert sorted(len(s["Instances"]) for s in orthanc_series(orthanc, job["id"])) == [1, SHAPE[2], SHAPE[2]]
