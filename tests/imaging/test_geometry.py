"""The model grid: a fixed field of view centred on the input, along the input's voxel axes."""

from __future__ import annotations

import numpy as np
import pytest

from tumorsynth.imaging.geometry import fit_to_grid


def oblique(spacing=(1.2, 0.9, 2.0), angle_deg=17.0, origin=(-80.0, -95.0, -40.0)) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]]
    )
    aff = np.eye(4)
    aff[:3, :3] = rot * np.asarray(spacing)
    aff[:3, 3] = origin
    return aff


def world(affine: np.ndarray, ijk) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(ijk, float) + affine[:3, 3]


def blob(shape, centre, sigma_vox) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    r2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, sigma_vox))
    return np.exp(-0.5 * r2).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_grid_affine_for_an_oblique_input():
    in_shape, aff = (60, 80, 40), oblique()
    m = fit_to_grid(in_shape, aff, (32, 32, 16), (192, 192, 160))
    assert m.grid_affine.shape == (4, 4)
    np.testing.assert_allclose(np.linalg.norm(m.grid_affine[:3, :3], axis=0), [6.0, 6.0, 10.0])
    # the grid's axes point along the input's voxel axes
    directions = m.grid_affine[:3, :3] / np.linalg.norm(m.grid_affine[:3, :3], axis=0)
    np.testing.assert_allclose(directions, aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0), atol=1e-12)
    # and the two volumes share their centre in world space
    np.testing.assert_allclose(world(m.grid_affine, [15.5, 15.5, 7.5]), world(aff, [29.5, 39.5, 19.5]), atol=1e-9)
    assert m.to_grid(np.zeros(in_shape, np.float32)).shape == (32, 32, 16)
    assert m.from_grid(np.zeros((32, 32, 16), np.float32)).shape == in_shape
    assert m.to_grid(np.zeros((3, *in_shape), np.float32)).shape == (3, 32, 32, 16)
    assert m.from_grid(np.zeros((4, 32, 32, 16), np.float32)).shape == (4, *in_shape)


def test_a_feature_stays_at_its_world_position():
    in_shape, aff = (60, 80, 40), oblique()
    m = fit_to_grid(in_shape, aff, (64, 64, 32), (192, 192, 160))
    image = blob(in_shape, (20, 50, 12), (4, 5, 2))
    on_grid = m.to_grid(image, order=1)
    assert on_grid.max() > 0.5
    np.testing.assert_allclose(world(m.grid_affine, centroid(on_grid)), world(aff, centroid(image)), atol=0.5)


def centroid(a: np.ndarray) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in a.shape], indexing="ij")
    return np.array([(g * a).sum() / a.sum() for g in grids])


def test_smooth_image_round_trips():
    in_shape, aff = (48, 56, 36), oblique(spacing=(2.0, 2.0, 2.5))
    image = blob(in_shape, (22, 30, 17), (6, 7, 5))
    m = fit_to_grid(in_shape, aff, (64, 64, 32), (192, 192, 160))
    back = m.from_grid(m.to_grid(image, order=1), order=1)
    assert back.dtype == np.float32
    assert np.abs(back - image).max() < 0.05


def test_labels_round_trip_when_the_grid_is_finer():
    in_shape, aff = (40, 44, 30), oblique(spacing=(3.0, 3.0, 4.0))
    labels = np.zeros(in_shape, np.int16)
    labels[blob(in_shape, (20, 22, 15), (8, 9, 6)) > 0.3] = 2
    labels[blob(in_shape, (21, 21, 14), (5, 5, 4)) > 0.4] = 1
    labels[blob(in_shape, (21, 23, 15), (3, 3, 3)) > 0.5] = 4
    m = fit_to_grid(in_shape, aff, (96, 96, 48), (192, 192, 160))  # 2 × 2 × 3.33 mm
    on_grid = m.to_grid(labels, order=0)
    assert on_grid.dtype == labels.dtype and set(np.unique(on_grid)) == {0, 1, 2, 4}
    back = m.from_grid(on_grid, order=0)
    for label in (1, 2, 4):
        assert dice(back == label, labels == label) > 0.95, label


def test_outside_the_input_is_zero():
    in_shape = (20, 20, 20)
    m = fit_to_grid(in_shape, np.diag([1.0, 1.0, 1.0, 1.0]), (16, 16, 16), (64, 64, 64))
    on_grid = m.to_grid(np.ones(in_shape, np.float32), order=1)
    assert on_grid[0, 0, 0] == 0 and on_grid[8, 8, 8] == 1


def test_refuses_malformed_arguments():
    with pytest.raises(ValueError, match="fov_mm"):
        fit_to_grid((10, 10, 10), np.eye(4), (8, 8, 8), (100, 0, 100))
    with pytest.raises(ValueError, match="in_shape"):
        fit_to_grid((10, 10), np.eye(4), (8, 8, 8), (100, 100, 100))
    m = fit_to_grid((10, 10, 10), np.eye(4), (8, 8, 8), (100, 100, 100))
    with pytest.raises(ValueError, match="input shape"):
        m.to_grid(np.zeros((8, 8, 8)))
