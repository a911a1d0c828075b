"""Balanced batches end to end: plan, fan-out, exact counters, manifest loadable by MONAI and TorchIO."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import ALPHA, BETA
from tests.support.services import wait_for
from tests.support.volumes import mask_bytes
from tumorsynth.client import Client
from tumorsynth.jobs.batches import plan

MODEL = "ldm/tiny@1"
SHAPE = (40, 44, 30)


def test_planner():
    assert plan({"LGG": 76, "HGG": 259}, "balance", None) == {"LGG": 183, "HGG": 0}
    assert plan({"LGG": 76, "HGG": 259}, None, 300) == {"LGG": 224, "HGG": 41}
    assert plan({"LGG": 76, "HGG": 259}, None, 100) == {"LGG": 24, "HGG": 0}


def api(client) -> Client:
    c = Client.__new__(Client)
    client.headers.update(ALPHA)
    c.http = client
    return c


@pytest.mark.parametrize(
    "body,field",
    [
        ({"model": MODEL, "class_counts": {"LGG": 1}}, "request"),  # neither target nor total_per_class
        ({"model": MODEL, "class_counts": {"XYZ": 1, "HGG": 3}, "target": "balance"}, "class_counts"),
        ({"model": MODEL, "class_counts": {"LGG": 3, "HGG": 3}, "target": "balance"}, "class_counts"),  # balanced
        ({"model": MODEL, "class_counts": {"LGG": 1, "HGG": 3}, "target": "balance", "masks": "upload"}, "masks"),
        ({"model": MODEL, "class_counts": {"LGG": 1}, "total_per_class": 99999}, "total_per_class"),
        (
            {"model": MODEL, "class_counts": {"LGG": 1, "HGG": 3}, "target": "balance", "intensity": "scanner"},
            "intensity",
        ),  # the tiny checkpoint records no scanner statistics
        ({"model": MODEL, "class_counts": {"LGG": 1, "HGG": 3}, "target": "balance", "intensity": "hu"}, "intensity"),
    ],
)
def test_bad_batches_are_422(client, body, field):
    r = client.post("/v1/batches", json=body, headers=ALPHA)
    assert r.status_code == 422, r.text
    assert any(e["field"].startswith(field) for e in r.json()["errors"]), r.json()


def test_balanced_batch_runs_and_its_manifest_loads_in_monai_and_torchio(client, worker, tmp_path):
    c = api(client)
    masks = [mask_bytes(SHAPE, "brats2023", seed=1), mask_bytes(SHAPE, "brats2019", seed=2)]
    batch = c.submit_batch(
        {
            "model": MODEL,
            "class_counts": {"LGG": 1, "HGG": 3},
            "target": "balance",
            "modalities": ["t1c", "flair"],
            "seed": 5,
            "masks": "upload",
            "intensity": "unit",
            "sampler": {"name": "dpm++", "steps": 5},
        },
        masks=masks,
    )
    assert batch["plan"] == {"LGG": 2, "HGG": 0} and batch["request_counts"]["total"] == 2
    assert client.get(f"/v1/batches/{batch['id']}", headers=BETA).status_code == 404
    batch = c.wait_batch(batch["id"], timeout=180, poll=0.2)
    assert batch["status"] == "succeeded" and batch["request_counts"] == {
        "total": 2,
        "succeeded": 2,
        "failed": 0,
        "canceled": 0,
    }
    manifest = c.download_batch(batch, tmp_path / "aug")
    rows = json.loads((tmp_path / "aug" / "manifest.json").read_text())
    assert len(rows) == 4 and {r["modality"] for r in rows} == {"t1c", "flair"}
    assert all(r["synthetic"] is True and r["class"] == "LGG" and len(r["checkpoint_sha256"]) == 64 for r in rows)
    assert (
        manifest.read_text()
        .splitlines()[0]
        .startswith(
            "subject_id,class,modality,image,mask,model,checkpoint_sha256,sampler,steps,seed,synthetic,intensity"
        )
    )
    assert {r["intensity"] for r in rows} == {"unit"}

    from monai.data import Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    ds = Dataset(
        rows, transform=Compose([LoadImaged(keys=["image", "mask"]), EnsureChannelFirstd(keys=["image", "mask"])])
    )
    item = ds[0]
    assert tuple(item["image"].shape) == (1, *SHAPE) and set(np.unique(item["mask"].numpy())) <= {0, 1, 2, 3}

    import torchio as tio

    subjects = tio.SubjectsDataset(
        [tio.Subject(image=tio.ScalarImage(r["image"]), mask=tio.LabelMap(r["mask"]), cls=r["class"]) for r in rows]
    )
    assert subjects[1]["image"].shape == (1, *SHAPE)


def test_batch_cancel_cancels_its_jobs_and_counts_them(client, worker):
    c = api(client)
    batch = c.submit_batch(
        {
            "model": MODEL,
            "class_counts": {"LGG": 0, "HGG": 3},
            "target": "balance",
            "masks": "upload",
            "sampler": {"name": "ddpm", "steps": 1000},
        },
        masks=[mask_bytes(SHAPE)],
    )
    assert batch["status"] == "planning" and batch["request_counts"]["total"] == 3
    wait_for(lambda: c.batch(batch["id"])["status"] != "planning", timeout=120, what="the worker planned it")
    r = client.post(f"/v1/batches/{batch['id']}/cancel", headers=ALPHA)
    assert r.status_code == 202
    done = wait_for(lambda: (b := c.batch(batch["id"]))["status"] == "canceled" and b, timeout=120)
    counts = done["request_counts"]
    assert counts["total"] == 3 and counts["canceled"] + counts["succeeded"] + counts["failed"] == 3
    assert counts["canceled"] >= 2


def test_class_conditioned_batch_needs_no_masks(client, worker):
    c = api(client)
    batch = c.submit_batch(
        {"model": "vqgan/tiny@1", "class_counts": {"LGG": 1, "HGG": 2}, "total_per_class": 2, "seed": 3}
    )
    assert batch["plan"] == {"LGG": 1, "HGG": 0}
    done = c.wait_batch(batch["id"], timeout=120, poll=0.2)
    assert done["status"] == "succeeded"
    rows = client.get(f"/v1/batches/{batch['id']}/manifest.json", headers=ALPHA).json()
    assert len(rows) == 1 and rows[0]["class"] == "LGG" and rows[0]["mask"] == ""


def test_mask_bank_upload_and_bank_masks_in_a_batch(client, worker):
    from tests.support.volumes import nifti_bytes
    from tumorsynth.imaging.examples import affine_1mm, example_mask

    bank_mask = nifti_bytes(example_mask(seed=4).astype(np.uint8), affine_1mm())
    r = client.post(
        "/v1/masks",
        headers=ALPHA,
        files={"request": (None, json.dumps({"tumor_class": "LGG"})), "mask": ("m.nii.gz", bank_mask)},
    )
    assert r.status_code == 201, r.text
    assert r.json()["class"] == "LGG" and r.json()["label_convention"] == "brats2023"
    small = client.post(
        "/v1/masks",
        headers=ALPHA,
        files={"request": (None, json.dumps({"tumor_class": "LGG"})), "mask": ("m.nii.gz", mask_bytes(SHAPE))},
    )
    assert small.status_code == 422 and small.json()["errors"][0]["field"] == "mask"
    c = api(client)
    batch = c.submit_batch(
        {
            "model": MODEL,
            "class_counts": {"LGG": 1, "HGG": 2},
            "target": "balance",
            "seed": 9,
            "modalities": ["flair"],
            "sampler": {"name": "dpm++", "steps": 5},
        }
    )
    done = c.wait_batch(batch["id"], timeout=240, poll=0.3)
    assert done["status"] == "succeeded", done
    rows = client.get(f"/v1/batches/{batch['id']}/manifest.json", headers=ALPHA).json()
    assert len(rows) == 1 and rows[0]["mask"].endswith("mask.nii.gz")


def test_a_batch_passes_its_options_to_every_job(client, worker):
    batch = client.post(
        "/v1/batches",
        json={
            "model": "vqgan/tiny@1",
            "class_counts": {"LGG": 0, "HGG": 0},
            "total_per_class": 1,
            "seed": 5,
            "options": {"temperature": 0.5, "top_k": 8},
        },
        headers=ALPHA,
    )
    assert batch.status_code == 202, batch.text
    planned = wait_for(
        lambda: (b := api(client).batch(batch.json()["id"]))["status"] != "planning" and b,
        timeout=120,
        what="the worker planned it",
    )
    jobs = [client.get(f"/v1/jobs/{j}", headers=ALPHA).json() for j in planned["jobs"]]
    assert len(jobs) == 2 and all(
        j["request"]["options"] == {"temperature": 0.5, "choice_temperature": 4.5, "guidance": 0.0, "top_k": 8}
        for j in jobs
    )
    client.post(f"/v1/batches/{batch.json()['id']}/cancel", headers=ALPHA)
