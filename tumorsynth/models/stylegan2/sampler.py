"""The ``direct`` sampler: one forward pass per sample, each from its own seed, with truncation toward the class
mean."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .generator import Generator


def sample_slices(generator: Generator, label: int, seeds: list[int], truncation: float = 1.0,
                  noise_mode: str = "random", progress: Callable[[int, int], None] | None = None,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Images (N, C, R, R) in the network's range (about [-1, 1]); sample i depends only on ``seeds[i]``.

    Each sample draws z and its noise maps from ``torch.Generator().manual_seed(seed)``, so a seed gives the same
    slice whatever the batch it is asked in. ``progress(done, total)`` is called after each sample (it may raise to
    cancel).
    """
    if not 0.0 <= truncation <= 1.0:
        raise ValueError(f"truncation must be within [0, 1], got {truncation}")
    device = torch.device(device)
    labels = torch.tensor([label], dtype=torch.long, device=device)
    out = []
    for done, seed in enumerate(seeds, 1):
        g = torch.Generator(device).manual_seed(int(seed))
        z = torch.randn((1, generator.z_dim), generator=g, device=device)  # (1, Z)
        out.append(generator(z, labels, truncation_psi=truncation, noise_mode=noise_mode, generator=g))
        if progress is not None:
            progress(done, len(seeds))
    return torch.cat(out)  # (N, C, R, R)
