"""The mask bank on a small 2 mm grid with an ellipsoid brain, and the template brain on a coarse grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tumorsynth.imaging.examples import example_mask
from tumorsynth.imaging.maskbank import (
    MaskStats,
    augment_mask,
    brain_template,
    core_exposure,
    generate_bank_masks,
    stats_per_class,
    whole_tumour_ml,
)
from tumorsynth.imaging.templates import brats_grid_affine

SHAPE = (64, 64, 48)
SPACING = (2.0, 2.0, 2.0)


@pytest.fixture(scope="module")
def brain() -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SHAPE], indexing="ij"))
    centre = (np.asarray(SHAPE, np.float32) - 1) / 2
    radii = np.asarray([28, 30, 22], np.float32)
    return (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) < 1


@pytest.fixture(scope="module")
def sources(brain) -> list[np.ndarray]:
    out = []
    for seed, (centre, radius) in enumerate((((32, 30, 24), 6.0), ((24, 36, 22), 5.0))):
        mask = example_mask(SHAPE, centre=centre, radius_mm=radius, seed=seed)
        mask[~brain] = 0
        out.append(mask)
    return out


@pytest.fixture(scope="module")
def bank(sources, brain) -> list[np.ndarray]:
    return generate_bank_masks(sources, brain, SPACING, n=4, seed=5)


def test_same_seed_same_bank_other_seed_other_bank(sources, brain, bank):
    again = generate_bank_masks(sources, brain, SPACING, n=4, seed=5)
    other = generate_bank_masks(sources, brain, SPACING, n=2, seed=6)
    for a, b in zip(bank, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(bank[0], other[0])
    assert not np.array_equal(bank[1], other[1])


def test_bank_masks_are_plausible(sources, brain, bank):
    stats = MaskStats.from_masks(sources, SPACING, margin=0.25)
    for i, mask in enumerate(bank):
        source = sources[i % len(sources)]
        assert mask.shape == brain.shape and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3}
        assert set(np.unique(mask).tolist()) == set(np.unique(source).tolist())  # no sub-region lost
        assert not np.any(mask[~brain])
        assert stats.allows(whole_tumour_ml(mask, SPACING))
        assert not np.array_equal(mask, source)
        core = (mask == 1) | (mask == 3)
        touching = ndimage.binary_dilation(mask == 0, ndimage.generate_binary_structure(3, 1))
        assert not np.any(core & touching)
        assert core_exposure(mask) == 0.0


def test_bank_masks_are_moved_and_reshaped(sources, bank):
    centres = [np.argwhere(m > 0).mean(0) for m in bank]
    assert max(np.linalg.norm(c - centres[0]) for c in centres[1:]) > 2  # voxels
    overlap = np.logical_and(bank[0] > 0, bank[2] > 0).sum() / max((bank[0] > 0).sum(), 1)
    assert overlap < 0.95  # same source, other placement or shape


def test_volume_stays_in_the_given_range(sources, brain):
    volume = whole_tumour_ml(sources[0], SPACING)
    stats = MaskStats(volume * 0.9, volume * 1.1)
    for seed in range(3):
        mask = augment_mask(sources[0], brain, SPACING, np.random.default_rng(seed), stats)
        assert stats.allows(whole_tumour_ml(mask, SPACING))


def test_refusals_say_what_to_change(sources, brain):
    small_brain = np.zeros_like(brain)
    small_brain[28:36, 28:36, 20:28] = True
    with pytest.raises(ValueError, match="does not fit inside the brain"):
        augment_mask(sources[0], small_brain, SPACING, np.random.default_rng(0), max_tries=3)
    volume = whole_tumour_ml(sources[0], SPACING)
    with pytest.raises(ValueError, match="cannot be scaled"):
        augment_mask(sources[0], brain, SPACING, np.random.default_rng(0), MaskStats(3 * volume, 4 * volume))
    with pytest.raises(ValueError, match="BraTS 2023"):
        augment_mask(np.where(sources[0] == 3, 4, sources[0]), brain, SPACING, np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty"):
        augment_mask(np.zeros(SHAPE, np.uint8), brain, SPACING, np.random.default_rng(0))


def test_stats_and_exposure():
    a = np.zeros((10, 10, 10), np.uint8)
    a[2:8, 2:8, 2:8] = 2
    a[4:6, 4:6, 4:6] = 3
    b = a.copy()
    b[4:6, 4:6, 7] = 1  # the core reaches the oedema's edge: it touches the background at z = 8
    assert core_exposure(a) == 0.0
    assert 0 < core_exposure(b) < 1
    stats = stats_per_class([a, b, a], ["LGG", "HGG", "LGG"], (1.0, 1.0, 1.0), margin=0.5)
    assert stats["LGG"].min_ml == pytest.approx(0.216 / 1.5)
    assert stats["LGG"].max_ml == pytest.approx(0.216 * 1.5)
    assert not stats["HGG"].allows(0.1)


def test_brain_template_on_a_coarse_grid():
    shape = (48, 48, 31)
    affine = brats_grid_affine(shape)
    brain = brain_template(shape, affine)
    assert brain.shape == shape and brain.dtype == bool
    assert 1.2e3 < whole_tumour_ml(brain, (5.0, 5.0, 5.0)) < 2.2e3  # ml of an adult brain
    centre = np.argwhere(brain).mean(0)
    np.testing.assert_allclose(centre, (np.asarray(shape) - 1) / 2, atol=3)
    # another grid convention (RAS, origin at the corner) still gets a centred brain
    ras = np.diag([5.0, 5.0, 5.0, 1.0])
    flipped = brain_template(shape, ras)
    assert nib.aff2axcodes(ras) == ("R", "A", "S")
    np.testing.assert_array_equal(flipped, brain[::-1, ::-1, :])
