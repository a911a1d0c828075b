"""A finished batch as a BIDS derivatives dataset: validated by the BIDS schema validator, queried by pybids,
loaded by MONAI and TorchIO from its manifest, the same through the zip, and the flat layout still there."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from tests.conftest import ALPHA, BETA
from tests.support.bids import validate
from tests.support.volumes import mask_bytes
from tumorsynth.client import Client

MODEL = "ldm/tiny@1"
SHAPE = (40, 44, 30)
NAMES = {
    "t1": "desc-synthetic_T1w",
    "t1c": "ce-gadolinium_desc-synthetic_T1w",
    "t2": "desc-synthetic_T2w",
    "flair": "desc-synthetic_FLAIR",
}


def api(client) -> Client:
    c = Client.__new__(Client)
    client.headers.update(ALPHA)
    c.http = client
    return c


@pytest.fixture(scope="module")
def done(app, worker):
    """One batch of two LGG subjects (four contrasts each, one binary mask) run to the end."""
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        c = api(client)
        masks = [mask_bytes(SHAPE, "brats2023", seed=1), mask_bytes(SHAPE, "binary", seed=2)]
        batch = c.submit_batch(
            {
                "model": MODEL,
                "class_counts": {"LGG": 0, "HGG": 2},
                "target": "balance",
                "seed": 3,
                "masks": "upload",
                "sampler": {"name": "dpm++", "steps": 5},
            },
            masks=masks,
        )
        batch = c.wait_batch(batch["id"], timeout=300, poll=0.3)
        assert batch["status"] == "succeeded", batch
        yield batch


def test_bids_download_passes_the_validator_and_pybids_reads_it(client, done, tmp_path):
    manifest = api(client).download_batch(done, tmp_path / "ds")
    assert manifest == tmp_path / "ds" / "manifest.csv"
    root = tmp_path / "ds" / "bids"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    for label in ("LGG0000", "LGG0001"):
        for suffix in NAMES.values():
            assert (
                f"sub-{label}/anat/sub-{label}_{suffix}.nii.gz" in files
                and f"sub-{label}/anat/sub-{label}_{suffix}.json" in files
            )
        assert f"sub-{label}/anat/sub-{label}_desc-synthetic_dseg.nii.gz" in files
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Model"] == MODEL and generated["ModelVersion"] == "1" and len(generated["CheckpointSha256"]) == 64

    report = validate(root)
    assert report["errors"] == [], report
    sidecar = json.loads((root / "sub-LGG0000/anat/sub-LGG0000_ce-gadolinium_desc-synthetic_T1w.json").read_text())
    assert next(iter(sidecar)) == "Synthetic" and sidecar["Synthetic"] is True and sidecar["Modality"] == "t1c"
    assert sidecar["CheckpointSha256"] == generated["CheckpointSha256"] and sidecar["SkullStripped"] is True
    # the second mask was binary: its label table says so; the first keeps BraTS 2023's three regions
    assert (root / "sub-LGG0001/anat/sub-LGG0001_desc-synthetic_dseg.tsv").read_text().splitlines()[1:] == [
        "1\twhole tumour\tWT"
    ]
    assert len((root / "sub-LGG0000/anat/sub-LGG0000_desc-synthetic_dseg.tsv").read_text().splitlines()) == 4

    from bids import BIDSLayout

    layout = BIDSLayout(root, validate=True, is_derivative=True)
    assert layout.get_subjects() == ["LGG0000", "LGG0001"]
    t1c = layout.get(suffix="T1w", ceagent="gadolinium", desc="synthetic", extension=".nii.gz")
    assert len(t1c) == 2 and t1c[0].get_metadata()["Synthetic"] is True
    assert len(layout.get(suffix="dseg", extension=".nii.gz")) == 2


def test_the_bids_manifest_loads_in_monai_and_torchio(client, done, tmp_path):
    api(client).download_batch(done, tmp_path / "ds")
    rows = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert len(rows) == 8 and {r["modality"] for r in rows} == {"t1", "t1c", "t2", "flair"}
    assert all(r["image"] == str(tmp_path / "ds" / "bids" / r["bids_image"]) for r in rows)
    assert all(r["image"].startswith(str(tmp_path / "ds" / "bids" / r["participant_id"] / "anat")) for r in rows)
    header = (tmp_path / "ds" / "manifest.csv").read_text().splitlines()[0]
    assert header == (
        "subject_id,class,modality,image,mask,model,checkpoint_sha256,sampler,steps,seed,synthetic,"
        "intensity,participant_id,bids_image,bids_mask"
    )

    from monai.data import Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    ds = Dataset(
        rows, transform=Compose([LoadImaged(keys=["image", "mask"]), EnsureChannelFirstd(keys=["image", "mask"])])
    )
    item = ds[0]
    assert tuple(item["image"].shape) == (1, *SHAPE) and set(np.unique(item["mask"].numpy())) <= {0, 1, 2, 3}

    import torchio as tio

    subjects = tio.SubjectsDataset(
        [tio.Subject(image=tio.ScalarImage(r["image"]), mask=tio.LabelMap(r["mask"])) for r in rows]
    )
    assert subjects[5]["image"].shape == (1, *SHAPE)


def test_the_zip_holds_the_same_dataset(client, done, tmp_path):
    api(client).download_batch(done, tmp_path / "ds")
    r = client.get(f"/v1/batches/{done['id']}/dataset.zip", headers=ALPHA)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        zf.extractall(tmp_path / "unzipped")
    unzipped = tmp_path / "unzipped" / done["id"]
    mine = {str(p.relative_to(unzipped)): p.read_bytes() for p in unzipped.rglob("*") if p.is_file()}
    theirs = {str(p.relative_to(tmp_path / "ds")): p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file()}
    assert set(mine) == set(theirs)
    assert all(mine[k] == theirs[k] for k in mine if not k.startswith("manifest."))  # manifests: relative paths
    assert validate(unzipped / "bids")["errors"] == []


def test_flat_layout_and_the_server_manifest_still_work(client, done, tmp_path):
    api(client).download_batch(done, tmp_path / "flat", layout="flat")
    rows = json.loads((tmp_path / "flat" / "manifest.json").read_text())
    assert all(r["image"].startswith(str((tmp_path / "flat" / r["subject_id"]).resolve())) for r in rows)
    server = client.get(f"/v1/batches/{done['id']}/manifest.json", headers=ALPHA).json()
    assert all(
        r["image"].startswith("tenants/alpha/jobs/") and r["bids_image"].startswith(r["participant_id"]) for r in server
    )
    with pytest.raises(ValueError, match="layout"):
        api(client).download_batch(done, tmp_path / "x", layout="zip")


def test_dataset_routes_answer_404_for_another_tenant_a_missing_file_or_a_running_batch(client, done):
    readme = client.get(f"/v1/batches/{done['id']}/dataset/bids/README", headers=ALPHA)
    assert readme.status_code == 200 and "SYNTHETIC" in readme.text
    assert client.get(f"/v1/batches/{done['id']}/dataset", headers=BETA).status_code == 404
    assert client.get(f"/v1/batches/{done['id']}/dataset.zip", headers=BETA).status_code == 404
    assert client.get(f"/v1/batches/{done['id']}/dataset/bids/README", headers=BETA).status_code == 404
    missing = client.get(f"/v1/batches/{done['id']}/dataset/bids/sub-LGG0000/anat/x.nii.gz", headers=ALPHA)
    assert missing.status_code == 404 and "lists them" in missing.json()["detail"]
    running = api(client).submit_batch(
        {
            "model": MODEL,
            "class_counts": {"LGG": 0, "HGG": 1},
            "target": "balance",
            "masks": "upload",
            "sampler": {"name": "ddpm", "steps": 1000},
        },
        masks=[mask_bytes(SHAPE)],
    )
    r = client.get(f"/v1/batches/{running['id']}/dataset", headers=ALPHA)
    assert r.status_code == 404 and "still running" in r.json()["detail"]
    assert client.post(f"/v1/batches/{running['id']}/cancel", headers=ALPHA).status_code == 202


def test_a_manifest_written_before_the_bids_columns_still_gives_the_dataset(app, done):
    from tumorsynth.jobs.batches import BatchService

    s = app.state.services
    rec = s.batches.get("alpha", done["id"])
    expected = [f.path for f in s.batches.dataset(rec)]
    rows = json.loads(s.store.get_bytes(rec.manifest["json"]))
    old = [{k: v for k, v in r.items() if k not in ("participant_id", "bids_image", "bids_mask")} for r in rows]
    s.store.put_bytes(rec.manifest["json"], json.dumps(old).encode(), "application/json")
    try:
        fresh = BatchService(s.jobs, s.submissions, s.store, s.registry)  # no cached dataset
        assert [f.path for f in fresh.dataset(rec)] == expected
    finally:
        s.store.put_bytes(rec.manifest["json"], json.dumps(rows).encode(), "application/json")
