"""Phantom subjects on a 2.5 mm grid (96×96×62 over the BraTS field of view), and one on the full BraTS grid."""

from __future__ import annotations

import csv
import socket

import nibabel as nib
import numpy as np
import pytest

from tumorsynth.data.brats import find_subjects, load_subject
from tumorsynth.data.phantoms import generate_phantoms, make_subject
from tumorsynth.imaging.templates import BRATS_SHAPE, _load, load_templates

SMALL = (96, 96, 62)
MODALITIES = ("t1", "t1c", "t2", "flair")


@pytest.fixture(scope="module")
def templates():
    return load_templates(SMALL)


@pytest.fixture(scope="module")
def subjects(templates):
    """Four subjects of each class."""
    return {
        cls: [make_subject(templates, np.random.default_rng([11, i]), cls) for i in range(4)] for cls in ("HGG", "LGG")
    }


def _healthy_white_matter(subject):
    return subject["brain"] & (subject["seg"] == 0) & (subject["wm"] > 0.9)


def test_templates_sit_on_the_brats_grid():
    t = load_templates()
    assert t.t1.shape == t.brain_mask.shape == BRATS_SHAPE
    assert nib.aff2axcodes(t.affine) == ("L", "P", "S")
    np.testing.assert_allclose(t.spacing, 1.0)
    assert 1.3e6 < t.brain_mask.sum() < 2.1e6  # mm³ of an adult brain
    assert np.median(t.t1[t.wm > 0.9]) == pytest.approx(1.0, abs=0.02)
    assert np.all(t.gm + t.wm + t.csf <= 1 + 1e-5)
    assert not np.any(t.t1[~t.brain_mask])


def test_templates_build_without_the_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the templates tried the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    built = _load.__wrapped__((48, 48, 31), tmp_path)
    cached = _load.__wrapped__((48, 48, 31), tmp_path)
    assert list(tmp_path.glob("templates-v*-48x48x31.npz"))
    for name in ("t1", "t2", "gm", "wm", "csf", "brain_mask", "affine"):
        np.testing.assert_array_equal(getattr(built, name), getattr(cached, name))


def test_same_seed_same_subject_other_seed_other_subject(templates):
    a = make_subject(templates, np.random.default_rng([3, 1]), "HGG")
    b = make_subject(templates, np.random.default_rng([3, 1]), "HGG")
    c = make_subject(templates, np.random.default_rng([3, 2]), "HGG")
    for key in (*MODALITIES, "seg"):
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a[key], c[key])


def test_labels_images_and_tumour_stay_in_the_brain(subjects):
    for group in subjects.values():
        for s in group:
            assert s["seg"].dtype == np.uint8 and set(np.unique(s["seg"])) <= {0, 1, 2, 3}
            assert np.count_nonzero(s["seg"]) > 0
            assert not np.any(s["seg"][~s["brain"]]), "tumour outside the brain"
            for m in MODALITIES:
                assert s[m].dtype == np.float32 and s[m].shape == SMALL
                assert not np.any(s[m][~s["brain"]]), "skull-stripped images are 0 outside the brain"
                assert np.all(s[m][s["brain"]] > 0)
            assert 8.0 <= s["radii_mm"]["whole"] <= 35.0


def test_hgg_has_an_enhancing_rim_bright_on_t1c(subjects):
    for s in subjects["HGG"]:
        assert {1, 2, 3} <= set(np.unique(s["seg"])) or {2, 3} <= set(np.unique(s["seg"]))
        enhancing = s["t1c"][s["seg"] == 3].mean()
        white = s["t1c"][_healthy_white_matter(s)].mean()
        assert enhancing > 1.3 * white
        # and only on T1C: the same voxels on T1 are not brighter than white matter
        assert s["t1"][s["seg"] == 3].mean() < s["t1"][_healthy_white_matter(s)].mean()


def test_lgg_does_not_enhance(subjects):
    for s in subjects["LGG"]:
        tumour = s["seg"] > 0
        assert np.count_nonzero(s["seg"] == 3) <= 0.01 * np.count_nonzero(tumour)
        assert s["t1c"][tumour].mean() < s["t1c"][_healthy_white_matter(s)].mean()


def test_edema_is_bright_on_flair(subjects):
    for group in subjects.values():
        for s in group:
            healthy = s["brain"] & (s["seg"] == 0)
            assert s["flair"][s["seg"] == 2].mean() > 1.2 * s["flair"][healthy].mean()


def test_make_subject_refuses_a_grid_the_templates_are_not_on(templates):
    with pytest.raises(ValueError, match="load_templates"):
        make_subject(templates, np.random.default_rng(0), "HGG", shape=BRATS_SHAPE)
    with pytest.raises(ValueError, match="tumor_class"):
        make_subject(templates, np.random.default_rng(0), "GBM")


def test_generated_folders_are_reproducible_by_subject(tmp_path):
    two = generate_phantoms(tmp_path / "a", 2, seed=5, shape=SMALL, convention="brats2019")
    three = generate_phantoms(tmp_path / "b", 3, seed=5, shape=SMALL, convention="brats2019")
    assert [p.name for p in two] == [p.name for p in three[:2]]
    for folder_a, folder_b in zip(two, three):
        files = sorted(f.name for f in folder_a.iterdir())
        assert files == sorted(f.name for f in folder_b.iterdir())
        for name in files:
            assert (folder_a / name).read_bytes() == (folder_b / name).read_bytes()
    other = generate_phantoms(tmp_path / "c", 1, seed=6, shape=SMALL, convention="brats2019")
    assert (other[0] / f"{other[0].name}_t1.nii.gz").read_bytes() != (two[0] / f"{two[0].name}_t1.nii.gz").read_bytes()


def test_brats2019_folders_use_2019_names_and_labels(tmp_path):
    folders = generate_phantoms(tmp_path, 2, seed=1, shape=SMALL, convention="brats2019", classes=("HGG",))
    for folder in folders:
        sid = folder.name
        assert sid.startswith("Phantom_HGG_")
        assert sorted(f.name for f in folder.iterdir()) == sorted(
            f"{sid}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")
        )
        seg = nib.load(folder / f"{sid}_seg.nii.gz")
        assert seg.get_data_dtype() == np.uint8
        assert {2, 4} <= set(np.unique(np.asanyarray(seg.dataobj))) <= {0, 1, 2, 4}
        assert nib.load(folder / f"{sid}_flair.nii.gz").get_data_dtype() == np.float32
    with (tmp_path / "subjects.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["subject_id"], r["class"]) for r in rows] == [(f.name, "HGG") for f in folders]


def test_brats2023_folder_reads_back_as_made(tmp_path, templates):
    folders = generate_phantoms(tmp_path, 2, seed=9, shape=SMALL, convention="brats2023")
    subjects = find_subjects(tmp_path)
    assert [s.id for s in subjects] == sorted(f.name for f in folders)
    loaded = load_subject(subjects[0])
    index = int(subjects[0].id.rsplit("_", 1)[1]) - 1
    rng = np.random.default_rng([9, index])
    rng.random()  # the class draw
    made = make_subject(templates, rng, subjects[0].tumor_class)
    np.testing.assert_array_equal(loaded["seg"], made["seg"])
    np.testing.assert_array_equal(loaded["image"][1], made["t1c"])
    np.testing.assert_allclose(loaded["affine"], templates.affine)
    assert loaded["class"] == subjects[0].tumor_class == subjects[0].id.split("_")[1]


def test_one_subject_on_the_full_brats_grid(tmp_path):
    [folder] = generate_phantoms(tmp_path, 1, seed=0, naming="brats2023")
    img = nib.load(folder / f"{folder.name}-t2f.nii.gz")
    assert img.shape == BRATS_SHAPE and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, load_templates().affine)
    seg = np.asanyarray(nib.load(folder / f"{folder.name}-seg.nii.gz").dataobj)
    assert seg.shape == BRATS_SHAPE and set(np.unique(seg)) <= {0, 1, 2, 3} and seg.any()
