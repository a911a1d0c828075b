"""The torch grid mapping: the geometry tests of the scipy path, and scipy itself as the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tumorsynth.imaging import grid_torch
from tumorsynth.imaging.geometry import fit_to_grid

from .test_geometry import blob, centroid, dice, oblique, world

GEOMETRIES = [
    ((60, 80, 40), oblique(), (64, 64, 32)),  # grid finer on two axes, coarser on one
    ((48, 56, 36), oblique(spacing=(2.0, 2.0, 2.5)), (32, 40, 16)),
    ((240, 240, 155), np.diag([1.0, 1.0, 1.0, 1.0]), (64, 64, 32)),  # BraTS-sized, grid coarser
    ((20, 20, 20), np.diag([1.0, 1.0, 1.0, 1.0]), (16, 16, 16)),  # grid beyond the input
]


@pytest.mark.parametrize("in_shape,aff,grid", GEOMETRIES)
def test_images_match_scipy(in_shape, aff, grid):
    m = fit_to_grid(in_shape, aff, grid, (192, 192, 160))
    rng = np.random.default_rng(0)
    image = rng.random((2, *in_shape), dtype=np.float32)
    on_grid = rng.random((3, *grid), dtype=np.float32)
    # grid_sample takes float32 coordinates normalised to [-1, 1]: ~1e-5 voxel on a 240-voxel axis
    np.testing.assert_allclose(grid_torch.to_grid(m, torch.from_numpy(image)).numpy(), m.to_grid(image), atol=1e-4)
    np.testing.assert_allclose(
        grid_torch.from_grid(m, torch.from_numpy(on_grid)).numpy(), m.from_grid(on_grid), atol=1e-4
    )


@pytest.mark.parametrize("in_shape,aff,grid", GEOMETRIES)
def test_labels_match_scipy_but_at_half_voxel_ties(in_shape, aff, grid):
    """Equal wherever a grid voxel is not exactly halfway between two source voxels; at such a tie either
    neighbour is right and the two round the last bit of the coordinate differently."""
    m = fit_to_grid(in_shape, aff, grid, (192, 192, 160))
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, in_shape).astype(np.int16)
    on_grid = rng.integers(0, 5, grid).astype(np.uint8)
    out = grid_torch.to_grid(m, torch.from_numpy(labels), order=0)
    assert out.dtype == torch.int16
    differ = out.numpy() != m.to_grid(labels, order=0)
    assert not (differ & ~at_tie(grid, m.step, m.offset)).any()
    back = grid_torch.from_grid(m, torch.from_numpy(on_grid), order=0).numpy()
    differ = back != m.from_grid(on_grid, order=0)
    assert not (differ & ~at_tie(in_shape, 1 / m.step, -m.offset / m.step)).any()


def at_tie(shape, step, offset) -> np.ndarray:
    ties = [np.abs((np.arange(n) * s + o) % 1 - 0.5) < 1e-9 for n, s, o in zip(shape, step, offset)]
    return ties[0][:, None, None] | ties[1][None, :, None] | ties[2][None, None, :]


def test_a_feature_stays_at_its_world_position():
    in_shape, aff = (60, 80, 40), oblique()
    m = fit_to_grid(in_shape, aff, (64, 64, 32), (192, 192, 160))
    image = blob(in_shape, (20, 50, 12), (4, 5, 2))
    on_grid = grid_torch.to_grid(m, torch.from_numpy(image)).numpy()
    assert on_grid.max() > 0.5
    np.testing.assert_allclose(world(m.grid_affine, centroid(on_grid)), world(aff, centroid(image)), atol=0.5)


def test_smooth_image_round_trips_and_shapes():
    in_shape, aff = (48, 56, 36), oblique(spacing=(2.0, 2.0, 2.5))
    image = torch.from_numpy(blob(in_shape, (22, 30, 17), (6, 7, 5)))
    m = fit_to_grid(in_shape, aff, (64, 64, 32), (192, 192, 160))
    back = grid_torch.from_grid(m, grid_torch.to_grid(m, image))
    assert back.dtype == torch.float32 and back.shape == in_shape
    assert (back - image).abs().max() < 0.05
    batch = torch.stack([image, 2 * image])[:, None].expand(2, 4, *in_shape)  # (N, C, X, Y, Z)
    assert grid_torch.to_grid(m, batch).shape == (2, 4, 64, 64, 32)


def test_labels_round_trip_when_the_grid_is_finer():
    in_shape, aff = (40, 44, 30), oblique(spacing=(3.0, 3.0, 4.0))
    labels = np.zeros(in_shape, np.int16)
    labels[blob(in_shape, (20, 22, 15), (8, 9, 6)) > 0.3] = 2
    labels[blob(in_shape, (21, 21, 14), (5, 5, 4)) > 0.4] = 1
    labels[blob(in_shape, (21, 23, 15), (3, 3, 3)) > 0.5] = 4
    m = fit_to_grid(in_shape, aff, (96, 96, 48), (192, 192, 160))
    back = grid_torch.from_grid(m, grid_torch.to_grid(m, torch.from_numpy(labels), order=0), order=0).numpy()
    for label in (1, 2, 4):
        assert dice(back == label, labels == label) > 0.95, label


def test_outside_the_input_is_zero_and_bad_shapes_refused():
    m = fit_to_grid((20, 20, 20), np.eye(4), (16, 16, 16), (64, 64, 64))
    on_grid = grid_torch.to_grid(m, torch.ones(20, 20, 20))
    assert on_grid[0, 0, 0] == 0 and on_grid[8, 8, 8] == 1
    with pytest.raises(ValueError, match="shape"):
        grid_torch.to_grid(m, torch.zeros(16, 16, 16))
    with pytest.raises(ValueError, match="order"):
        grid_torch.to_grid(m, torch.zeros(20, 20, 20), order=3)
