"""The BIDS view of a batch without a service: labels, names, the non-BIDS modalities under extra/, masks' label
tables, and the BIDS schema validator on datasets of every shape a family makes (4 contrasts + mask, a mask-less
class-conditioned ROI, a 2D slice with no BIDS name)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.bids import validate
from tumorsynth.imaging.nifti import write_nifti, write_sidecar
from tumorsynth.jobs.bids import add_bids_columns, dataset_files, made_from_sidecar, participant_labels

SHA = "ab" * 32


def test_labels_are_alphanumeric_per_class_and_fall_back_to_numbers_when_classes_collide():
    subjects = [{"subject_id": f"b-{c}-{k}", "class": c} for c, k in (("LGG", 0), ("HGG", 0), ("LGG", 1))]
    assert participant_labels(subjects) == {"b-LGG-0": "LGG0000", "b-HGG-0": "HGG0000", "b-LGG-1": "LGG0001"}
    clash = [{"subject_id": "a", "class": "L-GG"}, {"subject_id": "b", "class": "LGG"}]
    assert participant_labels(clash) == {"a": "00000", "b": "00001"}


def _rows(store_root, modalities, *, with_mask, convention="brats2023", subjects=("s-LGG-0",)):
    """Manifest rows whose volumes and sidecars are written under ``store_root`` as a worker would."""
    rows, shape = [], (12, 10, 8) if "slice" not in modalities else (16, 16, 1)
    for n, sid in enumerate(subjects):
        job = store_root / f"job{n}"
        job.mkdir(parents=True)
        for m in modalities:
            (job / f"sample-0_{m}.nii.gz").write_bytes(write_nifti(np.random.rand(*shape), np.eye(4)))
            (job / f"sample-0_{m}.json").write_bytes(write_sidecar({"Model": "ldm/x@1", "Modality": m}))
        if with_mask:
            (job / "mask.nii.gz").write_bytes(write_nifti(np.zeros(shape), np.eye(4)))
            (job / "mask.json").write_bytes(write_sidecar({"LabelConvention": convention}))
        rows += [
            {
                "subject_id": sid,
                "class": "LGG",
                "modality": m,
                "image": f"job{n}/sample-0_{m}.nii.gz",
                "mask": f"job{n}/mask.nii.gz" if with_mask else "",
                "model": "ldm/x@1",
                "checkpoint_sha256": SHA,
                "sampler": "dpm++",
                "steps": 5,
                "seed": n,
                "synthetic": True,
            }
            for m in modalities
        ]
    return add_bids_columns(rows, participant_labels([{"subject_id": s, "class": "LGG"} for s in subjects]))


def _materialise(store_root, files, out):
    for f in files:
        path = out / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if f.key is not None:
            path.write_bytes((store_root / f.key).read_bytes())
        else:
            path.write_bytes(
                f.content if f.content is not None else made_from_sidecar(f, (store_root / f.sidecar_of).read_bytes())
            )


@pytest.mark.parametrize(
    "modalities,with_mask", [(("t1", "t1c", "t2", "flair"), True), (("flair",), False), (("slice",), False)]
)
def test_every_family_s_batch_is_a_valid_bids_derivative(tmp_path, modalities, with_mask):
    rows = _rows(tmp_path / "store", modalities, with_mask=with_mask, subjects=("s-LGG-0", "s-LGG-1"))
    files = dataset_files("batch_x", rows)
    _materialise(tmp_path / "store", files, tmp_path / "dl")
    assert validate(tmp_path / "dl" / "bids")["errors"] == []
    manifest = json.loads((tmp_path / "dl" / "manifest.json").read_text())
    assert len(manifest) == len(rows) and all((tmp_path / "dl" / r["image"]).is_file() for r in manifest)
    if "slice" in modalities:  # no BIDS name: kept under extra/, said so in the README, empty bids_image
        assert all(r["bids_image"] == "" and r["image"].startswith("extra/s-LGG-") for r in manifest)
        assert "slice" in (tmp_path / "dl" / "bids" / "README").read_text()
    if not with_mask:
        assert all(r["mask"] == "" and r["bids_mask"] == "" for r in manifest)


def test_sidecars_keep_the_jobs_provenance_and_masks_get_their_label_table(tmp_path):
    rows = _rows(tmp_path / "store", ("t1c",), with_mask=True, convention="binary")
    by_path = {f.path: f for f in dataset_files("batch_x", rows)}
    side = by_path["bids/sub-LGG0000/anat/sub-LGG0000_ce-gadolinium_desc-synthetic_T1w.json"]
    fields = json.loads(made_from_sidecar(side, (tmp_path / "store" / side.sidecar_of).read_bytes()))
    assert list(fields)[:3] == ["Synthetic", "Model", "Modality"] and fields["SkullStripped"] is True
    table = by_path["bids/sub-LGG0000/anat/sub-LGG0000_desc-synthetic_dseg.tsv"]
    assert (
        made_from_sidecar(table, (tmp_path / "store" / table.sidecar_of).read_bytes()).decode()
        == "index\tname\tabbreviation\n1\twhole tumour\tWT\n"
    )
    description = json.loads(by_path["bids/dataset_description.json"].content)
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["CheckpointSha256"] == SHA
