"""Stage-1 losses that MONAI does not provide: the paper's 3D image-gradient loss.

Zhou et al. 2023, eq. (3): L_grad = ‖∇A(x) − ∇A(x̂)‖² + ‖∇R(x) − ∇R(x̂)‖² + ‖∇S(x) − ∇S(x̂)‖², the 2D image
gradients of the axial (A), coronal (R) and sagittal (S) planes. Each plane's gradient is the pair of forward
differences along its two in-plane axes, so every axis is differentiated in two planes. With the volume's voxel axes
(0, 1, 2) read as (x, y, z) in RAS order: axial = (x, y), coronal = (x, z), sagittal = (y, z). The squared norms are
means over voxels, so the weight does not depend on the grid size. The same code serves 2D images (one plane).
"""

from __future__ import annotations

from itertools import combinations

import torch


def forward_difference(x: torch.Tensor, axis: int) -> torch.Tensor:
    n = x.shape[axis]
    return x.narrow(axis, 1, n - 1) - x.narrow(axis, 0, n - 1)


def gradient_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ over the planes of the squared difference of in-plane gradients, for (B, C, *spatial) tensors."""
    if recon.shape != target.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape")
    spatial = range(2, recon.ndim)
    if len(spatial) < 2:
        raise ValueError(f"the gradient loss needs 2 or 3 spatial axes, got a {recon.ndim}D tensor")
    diff = recon - target  # the difference of gradients is the gradient of the difference
    total = recon.new_zeros(())
    for plane in combinations(spatial, 2):
        for axis in plane:
            total = total + forward_difference(diff, axis).pow(2).mean()
    return total
