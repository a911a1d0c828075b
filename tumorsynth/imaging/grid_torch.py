"""The model-grid mapping of ``geometry.GridMapping`` done by torch, on the tensor's device.

``GridMapping.to_grid``/``from_grid`` (scipy's ``affine_transform``) run on the CPU: on a GPU job the decoded volumes
had to come back to the host first and took ~1.1 s of scipy for four 240×240×155 outputs. Here the same map runs as
one ``torch.nn.functional.grid_sample`` call for every channel and sample at once, where the volumes already are.

The map is per axis ``i = step * j + offset`` (input voxel i, grid voxel j), so the sampling grid is built from three
1D coordinate vectors. It matches scipy's ``mode="constant"`` (a point outside ``[0, n - 1]`` on any axis is 0, no
interpolation towards the outside): ``grid_sample``'s ``padding_mode="zeros"`` alone would blend the edge voxels
with zeros over the last voxel, so points outside are masked to 0. ``order`` 1 is trilinear (``grid_sample``), 0
nearest (labels: a gather per axis). tests/imaging/test_grid_torch.py holds both to scipy on the same geometries.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import GridMapping

EDGE = 1e-4  # voxels: coordinates this far past the last voxel still count as inside (float32 rounding)


def to_grid(mapping: GridMapping, volume: torch.Tensor, order: int = 1) -> torch.Tensor:
    """Input-grid tensor → model grid. ``volume``: (X, Y, Z), (C, X, Y, Z) or (N, C, X, Y, Z)."""
    return resample(volume, mapping.in_shape, mapping.grid_shape, mapping.step, mapping.offset, order)


def from_grid(mapping: GridMapping, volume: torch.Tensor, order: int = 1) -> torch.Tensor:
    """Model-grid tensor → the input's shape. ``volume``: (X, Y, Z), (C, X, Y, Z) or (N, C, X, Y, Z)."""
    inv = 1.0 / mapping.step
    return resample(volume, mapping.grid_shape, mapping.in_shape, inv, -mapping.offset * inv, order)


def resample(
    volume: torch.Tensor, src_shape, dst_shape, step: np.ndarray, offset: np.ndarray, order: int
) -> torch.Tensor:
    """Sample ``volume`` (on ``src_shape``) at ``step * j + offset`` for each voxel j of ``dst_shape``."""
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (labels) or 1 (images), got {order}")
    if volume.ndim not in (3, 4, 5) or tuple(volume.shape[-3:]) != tuple(src_shape):
        raise ValueError(f"expected a tensor ending in the shape {tuple(src_shape)}, got {tuple(volume.shape)}")
    lead = volume.shape[:-3]
    x = volume.reshape(1, -1, *src_shape)  # every volume as a channel of one batch item: one grid serves them all
    coords, inside = [], []
    for n_src, n_dst, s, o in zip(src_shape, dst_shape, step, offset):
        c = torch.arange(n_dst, dtype=torch.float64, device=x.device) * float(s) + float(o)
        coords.append(c)
        inside.append((c >= -EDGE) & (c <= n_src - 1 + EDGE))
    keep = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    out = _nearest(x, coords, src_shape) if order == 0 else _trilinear(x, coords, src_shape)
    out = out * keep.to(out.dtype) if out.dtype.is_floating_point else out.masked_fill(~keep, 0)
    return out.reshape(*lead, *dst_shape)


def _trilinear(x: torch.Tensor, coords: list[torch.Tensor], src_shape) -> torch.Tensor:
    work = x.dtype if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
    norm = [(2 * c / (n - 1) - 1 if n > 1 else torch.zeros_like(c)).to(work) for c, n in zip(coords, src_shape)]
    gx, gy, gz = torch.meshgrid(*norm, indexing="ij")
    # grid_sample's last grid axis is (x, y, z) = (W, H, D): the tensor's axes from the last one back
    grid = torch.stack((gz, gy, gx), dim=-1).unsqueeze(0)  # (1, X, Y, Z, 3)
    return F.grid_sample(x.to(work), grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _nearest(x: torch.Tensor, coords: list[torch.Tensor], src_shape) -> torch.Tensor:
    """Labels: on an axis-aligned map nearest neighbour is one gather at the output's size, exact and in the labels'
    own dtype. Rounds half up as scipy does (``grid_sample``'s nearest rounds half to even and works in floats)."""
    ix, iy, iz = (torch.floor(c + 0.5).clamp_(0, n - 1).long() for c, n in zip(coords, src_shape))
    return x[:, :, ix[:, None, None], iy[None, :, None], iz[None, None, :]]
