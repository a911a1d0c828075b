"""Geometry to and from the model grid.

A model works on a fixed grid (e.g. 128×128×64 voxels) that covers a fixed physical field of view (e.g.
192×192×160 mm, so 1.5×1.5×2.5 mm voxels). The grid is centred on the centre of the input volume and its axes run
along the input's voxel axes, so an oblique input needs no reorientation: in voxel space the grid is only a scaling
plus a translation of the input, and its affine is the input affine composed with that map. The grid's axis k spans
``fov_mm[k]`` along the input's voxel axis k, whatever anatomical direction that axis has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class GridMapping:
    """Input voxel ``i`` and grid voxel ``j`` are related by ``i = step * j + offset`` (per axis)."""

    in_shape: tuple[int, int, int]
    grid_shape: tuple[int, int, int]
    step: np.ndarray  # (3,) input voxels per grid voxel
    offset: np.ndarray  # (3,) input voxel coordinate of grid voxel 0
    grid_affine: np.ndarray  # (4, 4) grid voxel -> world mm

    def to_grid(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """Input voxel array (3D, or 4D with a leading channel axis) → model grid; outside the input is 0."""
        return _resample(array, self.in_shape, self.grid_shape, self.step, self.offset, order, "input")

    def from_grid(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """Model grid array (3D, or 4D with a leading channel axis) → the input's shape; outside the grid is 0."""
        inv_step = 1.0 / self.step
        return _resample(array, self.grid_shape, self.in_shape, inv_step, -self.offset * inv_step, order, "grid")


def centred_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Voxel → world (mm) for an axis-aligned grid of ``shape`` and ``spacing`` whose centre is the origin: the
    geometry of outputs that have no input to follow (VQGAN ROIs, StyleGAN2 slices, model-grid evaluation)."""
    step = np.asarray(spacing, dtype=np.float64)
    affine = np.diag([*step, 1.0])
    affine[:3, 3] = -step * (np.asarray(shape, dtype=np.float64) - 1) / 2
    return affine


def fit_to_grid(
    in_shape: Sequence[int], in_affine: np.ndarray, grid_shape: Sequence[int], fov_mm: Sequence[float]
) -> GridMapping:
    """The mapping between an input volume and a model grid of ``grid_shape`` voxels covering ``fov_mm``."""
    in_shape = _shape3(in_shape, "in_shape")
    grid_shape = _shape3(grid_shape, "grid_shape")
    in_affine = np.asarray(in_affine, dtype=np.float64)
    fov = np.asarray(fov_mm, dtype=np.float64)
    if in_affine.shape != (4, 4) or not np.all(np.isfinite(in_affine)):
        raise ValueError(f"in_affine must be a finite 4×4 matrix, got shape {in_affine.shape}")
    if fov.shape != (3,) or np.any(fov <= 0):
        raise ValueError(f"fov_mm must be three positive lengths in mm, got {list(fov_mm)}")
    in_spacing = np.linalg.norm(in_affine[:3, :3], axis=0)
    if np.any(in_spacing <= 0):
        raise ValueError(f"in_affine has a zero-length voxel axis (spacing {in_spacing.tolist()})")
    grid_spacing = fov / np.asarray(grid_shape, dtype=np.float64)
    step = grid_spacing / in_spacing
    in_centre = (np.asarray(in_shape, dtype=np.float64) - 1) / 2
    grid_centre = (np.asarray(grid_shape, dtype=np.float64) - 1) / 2
    offset = in_centre - step * grid_centre
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = np.diag(step)
    voxel_map[:3, 3] = offset
    return GridMapping(in_shape, grid_shape, step, offset, in_affine @ voxel_map)


def _shape3(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    out = tuple(int(n) for n in shape)
    if len(out) != 3 or any(n < 1 for n in out):
        raise ValueError(f"{name} must be three positive voxel counts, got {list(shape)}")
    return out


def _resample(array, src_shape, dst_shape, matrix, offset, order: int, src_name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim not in (3, 4) or tuple(array.shape[-3:]) != tuple(src_shape):
        raise ValueError(
            f"expected an array of the {src_name} shape {tuple(src_shape)} (optionally with a leading channel axis), "
            f"got {array.shape}"
        )
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (labels) or 1 (images), got {order}")
    dtype = array.dtype if order == 0 else np.result_type(array.dtype, np.float32)
    if array.ndim == 4:
        return np.stack([_resample(c, src_shape, dst_shape, matrix, offset, order, src_name) for c in array])
    return ndimage.affine_transform(
        array,
        np.asarray(matrix),
        offset=np.asarray(offset),
        output_shape=tuple(dst_shape),
        output=dtype,
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
