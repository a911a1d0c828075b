"""The BraTS-folder loader on small hand-made volumes in both namings."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumorsynth.data.brats import crop_to_nonzero, find_subjects, load_nifti, load_subject, normalise

SHAPE = (12, 10, 8)
AFFINE = np.array([[-1.0, 0, 0, 90], [0, -1.0, 0, 120], [0, 0, 1.0, -70], [0, 0, 0, 1]])


def _write(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)


def _image(value: float) -> np.ndarray:
    data = np.zeros(SHAPE, np.float32)
    data[2:10, 2:8, 1:7] = value + np.arange(8 * 6 * 6, dtype=np.float32).reshape(8, 6, 6)
    return data


def _seg(labels) -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    for i, label in enumerate(labels):
        seg[4 + i, 4, 3] = label
    return seg


def _subject_2019(root: Path, sid: str, labels=(1, 2, 4)) -> None:
    for suffix, value in (("t1", 100), ("t1ce", 200), ("t2", 300), ("flair", 400)):
        _write(root / sid / f"{sid}_{suffix}.nii.gz", _image(value))
    _write(root / sid / f"{sid}_seg.nii.gz", _seg(labels))


def _subject_2023(root: Path, sid: str, labels=(1, 2, 3), seg=True) -> None:
    for suffix, value in (("t1n", 100), ("t1c", 200), ("t2w", 300), ("t2f", 400)):
        _write(root / sid / f"{sid}-{suffix}.nii.gz", _image(value))
    if seg:
        _write(root / sid / f"{sid}-seg.nii.gz", _seg(labels))


def test_finds_both_namings_and_maps_modalities(tmp_path):
    _subject_2019(tmp_path / "HGG", "BraTS19_2013_10_1")
    _subject_2023(tmp_path, "BraTS-GLI-00000-000", seg=False)
    new, old = find_subjects(tmp_path)  # sorted by id: "-" comes before "1"
    assert old.id == "BraTS19_2013_10_1" and new.id == "BraTS-GLI-00000-000"
    assert {m: p.name for m, p in old.paths.items()} == {
        "t1": "BraTS19_2013_10_1_t1.nii.gz",
        "t1c": "BraTS19_2013_10_1_t1ce.nii.gz",
        "t2": "BraTS19_2013_10_1_t2.nii.gz",
        "flair": "BraTS19_2013_10_1_flair.nii.gz",
    }
    assert {m: p.name.rsplit("-", 1)[1] for m, p in new.paths.items()} == {
        "t1": "t1n.nii.gz",
        "t1c": "t1c.nii.gz",
        "t2": "t2w.nii.gz",
        "flair": "t2f.nii.gz",
    }
    assert old.seg.name == "BraTS19_2013_10_1_seg.nii.gz" and new.seg is None
    assert (old.label_convention, new.label_convention) == ("brats2019", "brats2023")
    assert (old.tumor_class, new.tumor_class) == ("HGG", None)  # from the HGG/ folder; unknown


def test_class_comes_from_subjects_csv_then_the_id(tmp_path):
    _subject_2023(tmp_path, "Case_LGG_7")
    _subject_2023(tmp_path, "Case_8")
    _subject_2023(tmp_path, "Case_9")
    (tmp_path / "subjects.csv").write_text("subject_id,class\nCase_8,hgg\n")
    assert [(s.id, s.tumor_class) for s in find_subjects(tmp_path)] == [
        ("Case_8", "HGG"),
        ("Case_9", None),
        ("Case_LGG_7", "LGG"),
    ]


def test_loads_channels_in_order_and_converts_2019_labels(tmp_path):
    _subject_2019(tmp_path, "Old", labels=(1, 2, 4))
    _subject_2023(tmp_path, "New", labels=(1, 2, 3))
    new, old = find_subjects(tmp_path)
    a, b = load_subject(old), load_subject(new)
    for loaded in (a, b):
        assert loaded["image"].shape == (4, *SHAPE) and loaded["image"].dtype == np.float32
        np.testing.assert_array_equal(loaded["image"][:, 2, 2, 1], [100, 200, 300, 400])
        np.testing.assert_allclose(loaded["affine"], AFFINE)
        np.testing.assert_array_equal(loaded["seg"], _seg((1, 2, 3)))
        assert loaded["seg"].dtype == np.uint8
    flair_first = load_subject(old, modalities=("flair", "t1"))
    np.testing.assert_array_equal(flair_first["image"][:, 2, 2, 1], [400, 100])


def test_refuses_mixed_labels_and_missing_modalities(tmp_path):
    _subject_2023(tmp_path, "Mixed", labels=(3, 4))
    (subject,) = find_subjects(tmp_path)
    with pytest.raises(ValueError, match="3 and 4"):
        load_subject(subject)
    (tmp_path / "Mixed" / "Mixed-t2f.nii.gz").unlink()
    (subject,) = find_subjects(tmp_path)
    with pytest.raises(ValueError, match="flair"):
        load_subject(subject, modalities=("t1", "flair"))


def test_refuses_two_files_for_one_modality(tmp_path):
    _subject_2023(tmp_path, "Twice")
    _write(tmp_path / "Twice" / "Twice-t1n.nii", _image(1))
    with pytest.raises(ValueError, match="more than one"):
        find_subjects(tmp_path)


def test_normalise_z_scores_the_non_zero_voxels_only():
    rng = np.random.default_rng(0)
    image = np.zeros((2, *SHAPE), np.float32)
    image[0, 2:10, 2:8, 1:7] = rng.normal(500, 80, (8, 6, 6))
    image[1, 3:9, 2:8, 1:7] = rng.normal(-20, 3, (6, 6, 6))
    out = normalise(image)
    for c in range(2):
        inside = image[c] != 0
        assert out[c][inside].mean() == pytest.approx(0, abs=1e-5)
        assert out[c][inside].std() == pytest.approx(1, abs=1e-4)
        assert not np.any(out[c][~inside])
    brain = image[1] != 0
    assert normalise(image, brain=brain)[0][brain].std() == pytest.approx(1, abs=1e-4)


def test_crop_keeps_every_voxel_at_its_world_point():
    image = np.stack([_image(100), _image(200)])
    seg = _seg((1, 2, 3))
    crop = crop_to_nonzero(image, seg, margin=1, affine=AFFINE)
    assert crop.box == (slice(1, 11), slice(1, 9), slice(0, 8))
    assert crop.image.shape == (2, 10, 8, 8) and crop.seg.shape == (10, 8, 8)
    voxel = np.array([3, 4, 2])  # in the crop
    start = np.array([s.start for s in crop.box])
    np.testing.assert_allclose(crop.affine @ [*voxel, 1], AFFINE @ [*(voxel + start), 1])
    np.testing.assert_array_equal(crop.image[:, 3, 4, 2], image[:, 4, 5, 2])
    np.testing.assert_array_equal(crop.seg, seg[crop.box])
    tight = crop_to_nonzero(image)
    assert tight.box == (slice(2, 10), slice(2, 8), slice(1, 7)) and tight.affine is None
    with pytest.raises(ValueError, match="all zero"):
        crop_to_nonzero(np.zeros(SHAPE))


def test_load_nifti_reads_nifti1_and_nifti2_and_names_any_other_format(tmp_path):
    _write(tmp_path / "one.nii.gz", _image(1))
    nib.save(nib.Nifti2Image(_image(2), AFFINE), tmp_path / "two.nii")
    nib.save(nib.AnalyzeImage(_image(3), AFFINE), tmp_path / "analyze.img")
    for name, value in (("one.nii.gz", 1), ("two.nii", 2)):
        img = load_nifti(tmp_path / name)
        np.testing.assert_allclose(img.affine, AFFINE)
        np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), _image(value))
    with pytest.raises(ValueError, match=r"not a NIfTI-1 or NIfTI-2 image .*AnalyzeImage"):
        load_nifti(tmp_path / "analyze.img")
