"""One ``prepare_subject`` for every family: the LDM's cropped 3D grid and TA-ViT's in-plane grid that keeps every
slice, from the same phantom subjects; and the train/val split."""

from __future__ import annotations

import numpy as np
import pytest

from tumorsynth.data.brats import find_subjects, load_subject, normalise
from tumorsynth.data.phantoms import generate_phantoms
from tumorsynth.data.subjects import prepare_subject, split
from tumorsynth.models.tavit.slices import slice_mapping


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(root, 1, seed=5, shape=(64, 64, 40))
    return find_subjects(root)[0]


def test_the_ldm_grid_holds_the_brain_and_its_tumour(subject):
    image, labels = prepare_subject(subject, (24, 24, 16), (192.0, 192.0, 160.0), ("t1", "flair"))
    assert image.shape == (2, 24, 24, 16) and image.dtype == np.float32
    assert labels.shape == (24, 24, 16) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels > 0).any()
    brain = image[0] != 0
    assert abs(image[0][brain].mean()) < 0.5  # z-scored over the brain, background 0


def test_the_slice_grid_keeps_every_slice_and_matches_a_direct_mapping(subject):
    data = load_subject(subject, ("t1", "t1c"))
    image, labels = prepare_subject(subject, (32, 32), (240.0, 240.0), ("t1", "t1c"), to_grid=slice_mapping, crop=False)
    direct = slice_mapping(data["image"].shape[1:], data["affine"], (32, 32), (240.0, 240.0))
    assert image.shape == (2, 32, 32, data["image"].shape[3])
    np.testing.assert_array_equal(image, direct.to_grid(normalise(data["image"]), order=1).astype(np.float32))
    np.testing.assert_array_equal(labels, direct.to_grid(data["seg"], order=0).astype(np.uint8))


def test_split_keeps_one_of_each_and_is_seeded():
    train, val = split(10, 0.2, seed=3)
    assert sorted([*train, *val]) == list(range(10)) and len(val) == 2
    assert [list(a) for a in split(10, 0.2, seed=3)] == [list(train), list(val)]
    assert [len(a) for a in split(2, 0.01, seed=0)] == [1, 1] and [len(a) for a in split(1, 0.5, 0)] == [1, 0]
