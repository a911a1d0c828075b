"""The LDM trainer's pure functions: the autoencoder's losses and their voxel weights, its random crops and the
data augmentation (imported by ``training.ldm``, which keeps their names)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.brats import MODALITIES

if TYPE_CHECKING:
    from .ldm import LDMTrainConfig


def augment(images: torch.Tensor, regions: torch.Tensor, cfg: LDMTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """TorchIO flips and scaling of each (image, regions) pair, with torch's global RNG (seeded per epoch)."""
    import torchio as tio

    transforms: list[tio.Transform] = []
    if cfg.flip:
        transforms.append(tio.RandomFlip(axes=(0,), flip_probability=0.5))
    if cfg.scale_range > 0:
        transforms.append(
            tio.RandomAffine(
                scales=cfg.scale_range,
                degrees=0,
                translation=0,
                image_interpolation="linear",
                label_interpolation="nearest",
            )
        )
    if not transforms:
        return images, regions
    t = tio.Compose(transforms)
    out_i, out_r = [], []
    for img, reg in zip(images, regions):
        subject = t(tio.Subject(image=tio.ScalarImage(tensor=img), regions=tio.LabelMap(tensor=reg)))
        out_i.append(subject.get_scalar_image("image").data.float())
        out_r.append(subject.get_label_map("regions").data.float())
    return torch.stack(out_i), torch.stack(out_r)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, C, ...) under voxel weights (B, 1, ...) broadcast over channels; all-ones = the mean."""
    weights = weights.expand_as(values)
    return (values * weights).sum() / weights.sum()


def region_weights(regions: torch.Tensor, weights) -> torch.Tensor:
    """Voxel weights (B, 1, ...) = 1 + Σ_k weights[k]·regions[:, k] for region channels or fractions (B, 3, ...)."""
    w = torch.as_tensor(list(weights), dtype=regions.dtype, device=regions.device)
    w = w.view(1, -1, *[1] * (regions.ndim - 2))
    return 1 + (regions * w).sum(dim=1, keepdim=True)


def random_crops(
    images: torch.Tensor, regions: torch.Tensor, size, tumour_fraction: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One crop of ``size`` per (image, regions) pair; with probability ``tumour_fraction`` centred on a random
    tumour voxel, otherwise on a random brain voxel (non-zero in any contrast); windows are kept inside the grid."""
    size = tuple(int(n) for n in size)
    grid = images.shape[2:]
    if any(s > g for s, g in zip(size, grid)):
        raise ValueError(f"ae_crop {size} is larger than the model grid {tuple(grid)}")
    xs, rs = [], []
    for img, reg in zip(images, regions):
        tumour = reg[0] > 0.5
        pool = tumour if tumour.any() and rng.random() < tumour_fraction else (img != 0).any(dim=0)
        points = torch.nonzero(pool) if pool.any() else torch.tensor([[g // 2 for g in grid]])
        centre = points[int(rng.integers(len(points)))].tolist()
        lo = [min(max(c - s // 2, 0), g - s) for c, s, g in zip(centre, size, grid)]
        window = tuple(slice(a, a + s) for a, s in zip(lo, size))
        xs.append(img[(slice(None), *window)])
        rs.append(reg[(slice(None), *window)])
    return torch.stack(xs), torch.stack(rs)


def enhancement_l1(recon: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted L1 of (T1C − T1) between reconstruction and input (channels in MODALITIES order)."""
    t1, t1c = MODALITIES.index("t1"), MODALITIES.index("t1c")
    diff = (recon[:, t1c] - recon[:, t1]) - (x[:, t1c] - x[:, t1])
    return weighted_mean(diff.abs()[:, None], weights)


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over latent voxels, averaged over the batch (as MONAI's tutorials)."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1)
    return kl.sum(dim=list(range(1, kl.ndim))).mean()
