"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for training a GAN on a few hundred images.

After mit-han-lab/data-efficient-gans ``DiffAugment_pytorch.py``: the discriminator only ever sees augmented images,
real and generated alike, and the generator's loss goes through the same (differentiable) augmentation, so D cannot
memorise the few training slices and G is not pushed to reproduce the augmentations (they are applied to both
sides). Policies: ``color`` (brightness and contrast; saturation is meaningless for one channel), ``translation``
(shift by up to 1/8 of the size) and ``cutout`` (one square of half the size). Images are in [-1, 1] with -1 the
background, so translation and cutout fill with -1 (the reference fills with 0, its black).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")
BACKGROUND = -1.0


def _rand(shape, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=x.device, dtype=x.dtype, generator=generator)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness ± 0.5 (a quarter of the [-1, 1] range), then contrast × [0.5, 1.5] about each image's mean."""
    n = x.shape[0]
    x = x + (_rand((n, 1, 1, 1), x, generator) - 0.5)
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand((n, 1, 1, 1), x, generator) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer shift of each image by up to ``ratio`` of its size in each axis, background coming in at the edges."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(-sw, sw + 1, (n,), device=x.device, generator=generator)
    padded = F.pad(x, [sw, sw, sh, sh], value=BACKGROUND)  # (N, C, H + 2sh, W + 2sw)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + sh - dy.view(n, 1, 1)).expand(n, h, w)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + sw - dx.view(n, 1, 1)).expand(n, h, w)
    idx = (rows * padded.shape[3] + cols).view(n, 1, h * w).expand(-1, x.shape[1], -1)  # (N, C, H*W)
    return padded.flatten(2).gather(2, idx).view_as(x)


def cutout(x: torch.Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sets one square of ``ratio`` of the size, centred anywhere in the image, to background."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    dy, dx = ys - cy + ch // 2, xs - cx + cw // 2
    inside = (dy >= 0) & (dy < ch) & (dx >= 0) & (dx < cw)  # (N, H, W)
    return torch.where(inside.unsqueeze(1), torch.full_like(x, BACKGROUND), x)


def diff_augment(
    x: torch.Tensor, policy: tuple[str, ...] | list[str] = POLICIES, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` (N, C, H, W) in [-1, 1] through each policy in turn, a fresh draw per image; differentiable in x."""
    unknown = set(policy) - set(POLICIES)
    if unknown:
        raise ValueError(f"unknown DiffAugment policies {sorted(unknown)}; choose from {', '.join(POLICIES)}")
    ops: dict[str, Callable[..., torch.Tensor]] = {"color": color, "translation": translation, "cutout": cutout}
    for name in policy:
        x = ops[name](x, generator=generator)
    return x
