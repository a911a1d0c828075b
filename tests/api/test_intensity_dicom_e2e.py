"""Intensity scales and DICOM output through the API and a real worker (tiny LDM; the demo LDM for "scanner").

Bad settings are a 422 naming the field, with nothing stored or queued; good ones give sidecars that state the scale,
and a ``dicom.zip`` whose series sit exactly where the (oblique) NIfTI outputs do, valid for dciodvfy, with a SEG of
the mask, marked SYNTHETIC and carrying none of the uploader's header text.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.api.helpers import submit, wait_status
from tests.api.test_jobs_e2e import fetch
from tests.conftest import ALPHA
from tests.support.dicom import dciodvfy_errors
from tests.support.volumes import load, mask_bytes, oblique_affine
from tumorsynth.imaging.dicom import PATIENT_NAME

ROOT = Path(__file__).resolve().parents[2]

TINY = "ldm/tiny@1"
SHAPE = (40, 44, 30)


def request(**extra) -> dict:
    return {"model": TINY, "seed": 3, "sampler": {"name": "dpm++", "steps": 5}} | extra


def download(client, job: dict, name: str) -> bytes:
    return fetch(client, job["id"], name)


@pytest.mark.parametrize(
    ("extra", "field", "says"),
    [
        ({"intensity": "hounsfield"}, "intensity", "zscore"),
        ({"intensity": "scanner"}, "intensity", "ldm/tiny@1 records no scanner-scale statistics"),
        ({"formats": ["dicom", "dicom"]}, "formats", "list each format once"),
        ({"formats": ["nifti", "dcm"]}, "formats", "dicom"),
        ({"formats": ["nifti", "dicom"], "send_to": "email"}, "send_to", "pacs"),
        ({"send_to": "pacs"}, "send_to", 'add "dicom" to formats'),
        ({"formats": ["nifti", "dicom"], "send_to": "pacs"}, "send_to", "no PACS destination configured"),
    ],
)
def test_bad_output_settings_are_a_422_naming_the_field_and_nothing_is_queued(client, extra, field, says):
    before = client.get("/v1/jobs?limit=200", headers=ALPHA).json()["jobs"]
    r = submit(client, request(**extra), {"mask": mask_bytes(SHAPE)})
    assert r.status_code == 422, r.text
    problem = r.json()
    assert any(e["field"].startswith(field) and says in e["message"] for e in problem["errors"]), problem
    assert [j["id"] for j in client.get("/v1/jobs?limit=200", headers=ALPHA).json()["jobs"]] == [
        j["id"] for j in before
    ]


def test_unit_scale_and_dicom_archive_in_the_masks_oblique_geometry(client, worker, tmp_path):
    affine = oblique_affine()
    job = submit(
        client, request(intensity="unit", formats=["dicom"]), {"mask": mask_bytes(SHAPE, affine=affine)}
    ).json()
    assert job["request"]["intensity"] == "unit" and job["request"]["formats"] == ["dicom"]
    done = wait_status(client, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    (archive,) = [o for o in done["outputs"] if o["kind"] == "dicom"]
    assert archive["name"] == "dicom.zip" and archive["url"]
    # NIfTI outputs (written whatever the formats): [0, 1], background 0, and the sidecar says so
    flair = load(download(client, done, "sample-0_flair.nii.gz"))
    data = flair.get_fdata()
    assert data.min() == 0.0 and data.max() == pytest.approx(1.0) and np.allclose(flair.affine, affine, atol=1e-4)
    side = json.loads(download(client, done, "sample-0_flair.json"))
    assert side["IntensityScale"] == "unit" and side["IntensityParameters"]["HighPercentile"] == 99.5
    assert json.loads(download(client, done, "mask.json"))["IntensityScale"] == "labels"
    # the archive: one series per contrast, a SEG, every instance where the NIfTI voxel is
    raw = download(client, done, "dicom.zip")
    assert b"JANE" not in raw and b"1970" not in raw  # the upload's header text never travels
    zipfile.ZipFile(io.BytesIO(raw)).extractall(tmp_path)
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 4 * SHAPE[2] + 1
    assert {f.name for f in files if f.parent.name == "mask"} == {"SEG.dcm"}
    for f in files:
        assert dciodvfy_errors(f) == [], f
    series = [pydicom.dcmread(f) for f in sorted((tmp_path / "sample-0" / "flair").glob("*.dcm"))]
    assert {str(ds.PatientName) for ds in series} == {PATIENT_NAME} and series[0].PatientID == job["id"]
    assert series[0].SeriesDescription.startswith("SYNTHETIC FLAIR")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    for k in (0, SHAPE[2] - 1):
        ds = series[k]
        expected = (lps @ affine @ [0, 0, k, 1])[:3]
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], expected, atol=1e-3)
        # stored pixel (row j, column i) is NIfTI voxel (i, j, k), on the job's scale
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(values - data[:, :, k].T).max() <= float(ds.RescaleSlope)


def test_scanner_scale_on_the_demo_ldm(client, worker):
    job = submit(
        client,
        {
            "model": "ldm/demo-phantom@1",
            "seed": 1,
            "intensity": "scanner",
            "modalities": ["t2"],
            "sampler": {"name": "ddim", "steps": 10},
        },
        {"mask": mask_bytes(SHAPE)},
    ).json()
    done = wait_status(client, job["id"], {"succeeded", "failed"}, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    img = load(download(client, done, "sample-0_t2.nii.gz"))
    assert img.get_data_dtype() == np.int16
    data = np.asarray(img.dataobj)
    side = json.loads(download(client, done, "sample-0_t2.json"))
    mean = json.loads((ROOT / "checkpoints" / "ldm" / "demo-phantom@1" / "config.json").read_text())["intensity"][
        "scanner"
    ]["t2"]["mean"]  # what the checkpoint recorded from its training phantoms
    assert side["IntensityScale"] == "scanner" and side["IntensityParameters"]["Mean"] == mean
    brain = data > 0
    assert data.min() >= 0 and 0.05 < brain.mean() < 0.95
    assert abs(float(data[brain].mean()) - mean) < 0.25 * mean  # a z-scored brain lands near the mean


def test_a_class_to_roi_job_as_dicom(client, worker, tmp_path):
    """VQGAN: no mask, so no SEG; its ROI as an MR series on the ROI's own grid, z-scores from its clipped range."""
    job = submit(
        client,
        {"model": "vqgan/tiny@1", "tumor_class": "HGG", "seed": 2, "num_samples": 2, "formats": ["nifti", "dicom"]},
    ).json()
    done = wait_status(client, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    side = json.loads(download(client, done, "sample-1_flair.json"))
    assert side["IntensityScale"] == "zscore" and side["IntensityParameters"]["ClippedAt"] == 5.0
    roi = load(download(client, done, "sample-1_flair.nii.gz"))
    zipfile.ZipFile(io.BytesIO(download(client, done, "dicom.zip"))).extractall(tmp_path)
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 2 * roi.shape[2] and not (tmp_path / "mask").exists()
    for f in files:
        assert dciodvfy_errors(f) == [], f
    first = pydicom.dcmread(tmp_path / "sample-1" / "flair" / "IM00001.dcm")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert np.allclose([float(v) for v in first.ImagePositionPatient], (lps @ roi.affine @ [0, 0, 0, 1])[:3], atol=1e-3)
