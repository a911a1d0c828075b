"""Volumes to model slices and back, shared by serving and training.

The slice grid is a 3D grid of (H, W, Z) voxels built with ``imaging.geometry.fit_to_grid``: in-plane it covers the
model's field of view (240×240 mm) centred on the volume's centre; along the third voxel axis it keeps the input's
slices one for one (its extent is Z × the input's slice spacing, so the step is 1 and the offset 0). Only the
in-plane resampling interpolates, and ``GridMapping.from_grid`` maps the result back to the input's shape and affine.
Slices are taken along the input's third voxel axis, which is axial for BraTS-format data (and most acquisitions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...imaging.geometry import GridMapping, fit_to_grid


def zscore_brain(volume: np.ndarray) -> np.ndarray:
    """Z-score over the non-zero voxels, 0 elsewhere; the same as ``data.brats.normalise`` of one channel."""
    volume = np.asarray(volume, dtype=np.float32)
    out = np.zeros_like(volume)
    inside = volume != 0
    values = volume[inside]
    if values.size:
        std = float(values.std(dtype=np.float64))
        out[inside] = (values - float(values.mean(dtype=np.float64))) / (std if std > 0 else 1.0)
    return out


def slice_mapping(
    shape: Sequence[int], affine: np.ndarray, grid: Sequence[int], fov_mm: Sequence[float]
) -> GridMapping:
    """The mapping between a volume and the model's (H, W, Z) slice grid."""
    affine = np.asarray(affine, dtype=np.float64)
    n_slices = int(shape[2])
    slice_spacing = float(np.linalg.norm(affine[:3, 2]))
    return fit_to_grid(
        shape,
        affine,
        (int(grid[0]), int(grid[1]), n_slices),
        (float(fov_mm[0]), float(fov_mm[1]), n_slices * slice_spacing),
    )


def to_slices(grid_array: np.ndarray) -> np.ndarray:
    """(C, H, W, Z) on the slice grid → (Z, C, H, W) slices."""
    return np.ascontiguousarray(np.moveaxis(grid_array, -1, 0))


def from_slices(slices: np.ndarray) -> np.ndarray:
    """(Z, H, W) slices → (H, W, Z) on the slice grid."""
    return np.moveaxis(slices, 0, -1)


def brain_slices(t1_grid: np.ndarray, min_fraction: float = 0.0) -> np.ndarray:
    """Indices of the slices of an (H, W, Z) grid volume whose non-zero share exceeds ``min_fraction``."""
    share = (t1_grid != 0).mean(axis=(0, 1))
    return np.flatnonzero(share > min_fraction)


def with_context(slices: np.ndarray, k: int) -> np.ndarray:
    """(Z, C, H, W) slices → (Z, C·(2k + 1), H, W): each slice's channels, then those of its neighbours at offsets
    −k … −1, 1 … k (the volume's edge slices stand in for neighbours beyond it)."""
    if k == 0:
        return slices
    return np.concatenate(
        [slices[context_index(np.arange(len(slices)), len(slices), k)[:, j]] for j in range(2 * k + 1)], axis=1
    )


def context_index(z: np.ndarray, n: int, k: int) -> np.ndarray:
    """For slice indices ``z`` of a stack of ``n``, the indices (len(z), 2k + 1) of each slice, then its neighbours
    at offsets −k … −1, 1 … k, clamped to the stack."""
    offsets = np.array([0, *range(-k, 0), *range(1, k + 1)])
    return np.clip(np.asarray(z)[:, None] + offsets[None], 0, n - 1)
