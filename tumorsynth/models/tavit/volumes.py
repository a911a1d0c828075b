"""The runner's volume work in torch on the job's device: the serving twins of ``slices`` (numpy).

The runner used to z-score, resample (scipy) and cut slices on the host, then copy each chunk of slices to the
device and its output back: on an H200 that host work and the copies, not the network, made most of a 240×240×155
job's 2.38 s (issue 15). These are the same operations on tensors, so a volume goes to the device once and comes
back once. ``slices`` keeps the numpy versions, which training uses; tests/models/test_tavit_fast.py holds these
to them.

Images are resampled by ``resample``, not ``imaging.grid_torch``: the runner keeps T1C only where the resampled T1 is
non-zero, and ``grid_sample``'s float32 normalised coordinates give a weight of ~1e-6 where scipy's float64 ones give
exactly 0, so a rim of slice-grid voxels at the brain's edge turned from background into tissue (0.46 z apart on the
tiny preset's test volume). An axis-aligned linear map is separable: one (n_dst, n_src) weight matrix per axis, built
in float64 the way scipy's ``zoom_shift`` places its samples, applied as three matrix products; a weight scipy makes
0 is 0 here, so the same voxels are exactly 0. Labels keep ``grid_torch``'s nearest neighbour (an exact gather).
Only ``brain_slices`` waits for the device (a count of slices decides the batches).
"""

from __future__ import annotations

import numpy as np
import torch

from ...imaging.geometry import GridMapping


def zscore_brain(volume: torch.Tensor) -> torch.Tensor:
    """``slices.zscore_brain`` on a float32 tensor: z-score over the non-zero voxels (float64 sums), 0 elsewhere."""
    inside = volume != 0
    count = inside.sum().clamp_(min=1).double()
    mean = volume.sum(dtype=torch.float64) / count  # the zeros outside add nothing
    var = torch.where(inside, volume.double() - mean, 0.0).square_().sum() / count
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    # 0-dim float64 operands do not promote a float32 tensor: the arithmetic is float32, as numpy's with floats
    return torch.where(inside, (volume - mean) / std, 0.0)


def to_regions(labels: torch.Tensor) -> torch.Tensor:
    """``imaging.labels.to_regions`` (no convention) on integer labels (...) → (3, ...) float32: WT = label > 0,
    TC = {1, 3, 4}, ET = {3, 4}; a mask whose tumour labels are all 1 is binary and gives WT only."""
    wt = labels > 0
    not_binary = (labels > 1).any()  # a tensor, not a bool: no device sync
    et = ((labels == 3) | (labels == 4)) & not_binary  # comparisons, not isin: no host list copied to the device
    tc = et | ((labels == 1) & not_binary)
    return torch.stack([wt, tc, et]).float()


def to_slices(grid: torch.Tensor) -> torch.Tensor:
    """(C, H, W, Z) on the slice grid → (Z, C, H, W) slices, contiguous."""
    return grid.permute(3, 0, 1, 2).contiguous()


def with_context(slices: torch.Tensor, k: int) -> torch.Tensor:
    """``slices.with_context``: (Z, C, H, W) → (Z, C·(2k + 1), H, W), each slice's channels, then those of its
    neighbours at offsets −k … −1, 1 … k, clamped at the volume's edges."""
    if k == 0:
        return slices
    n = slices.shape[0]
    offsets = [0, *range(-k, 0), *range(1, k + 1)]
    z = torch.arange(n, device=slices.device)
    return torch.cat([slices[(z + o).clamp_(0, n - 1)] for o in offsets], dim=1)


def brain_slices(t1_grid: torch.Tensor) -> torch.Tensor:
    """Indices of the slices of an (H, W, Z) grid volume holding any non-zero voxel (``slices.brain_slices``)."""
    return torch.nonzero((t1_grid != 0).any(dim=0).any(dim=0)).flatten()


def to_grid(mapping: GridMapping, volume: torch.Tensor) -> torch.Tensor:
    """(C, X, Y, Z) input-grid images → (C, H, W, Z) on the slice grid; ``GridMapping.to_grid(order=1)``."""
    return resample(volume, mapping.grid_shape, mapping.step, mapping.offset)


def from_grid(mapping: GridMapping, volume: torch.Tensor) -> torch.Tensor:
    """(..., H, W, Z) slice-grid images → (..., X, Y, Z); ``GridMapping.from_grid(order=1)``."""
    inv = 1.0 / mapping.step
    return resample(volume, mapping.in_shape, inv, -mapping.offset * inv)


def resample(volume: torch.Tensor, dst_shape: tuple[int, ...], matrix: np.ndarray, offset: np.ndarray) -> torch.Tensor:
    """scipy's ``affine_transform(volume, matrix, offset, order=1, mode="constant", prefilter=False)`` over the last
    three axes, for a diagonal ``matrix``: input coordinate ``(j + offset / matrix) * matrix`` for output voxel j.

    The products run in float64 on CUDA (cheap there, and immune to TF32) and in float32 on the CPU.
    """
    work = torch.float64 if volume.device.type == "cuda" else torch.float32
    src = volume.shape[-3:]
    weights = [
        linear_weights(int(n_src), int(n_dst), float(m), float(o))
        for n_src, n_dst, m, o in zip(src, dst_shape, matrix, offset)
    ]
    out = volume
    for axis, w in enumerate(weights):
        if w.shape[0] == w.shape[1] and np.array_equal(w, np.eye(len(w))):
            continue  # the slice axis, and in-plane where the grid is the input's: nothing to compute
        dim = volume.ndim - 3 + axis
        out = torch.movedim(
            torch.tensordot(torch.from_numpy(w).to(out.device, work), out.to(work), dims=([1], [dim])), 0, dim
        )
    return out.to(volume.dtype)  # ``volume`` itself where every axis is the identity


def linear_weights(n_src: int, n_dst: int, matrix: float, offset: float) -> np.ndarray:
    """(n_dst, n_src) float64: row j holds the linear-interpolation weights of the input coordinate of output voxel
    j; all 0 outside ``[0, n_src - 1]`` (scipy's ``mode="constant"`` interpolates nothing across the edge)."""
    coords = (np.arange(n_dst, dtype=np.float64) + offset / matrix) * matrix  # as scipy's zoom_shift
    weights = np.zeros((n_dst, n_src))
    rows = np.flatnonzero((coords >= 0) & (coords <= n_src - 1))
    start = np.floor(coords[rows]).astype(np.int64)
    frac = coords[rows] - start
    weights[rows, start] = 1 - frac
    nxt = start + 1 < n_src
    weights[rows[nxt], start[nxt] + 1] = frac[nxt]
    return weights
