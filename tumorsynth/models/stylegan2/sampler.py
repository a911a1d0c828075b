"""The ``direct`` sampler: one forward pass per batch of seeds, with truncation toward the class mean.

A seed's slice does not depend on its batch: each seed's z and noise maps are drawn from its own
``torch.Generator``, in the order the one-sample-at-a-time sampler drew them (z, then each layer's map as the layers
ran), so the slices equal that sampler's within float rounding (tests/models/test_stylegan2_fast.py). The draws are
small (z and 2·log2(R) - 2 maps per seed); the network then runs once for the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .generator import Generator

BATCH = 64  # seeds per forward pass: 256 px in bf16 needs ~3 GB at 64; progress is reported per batch


def seeded_inputs(net: Generator, seeds: list[int], noise_mode: str,
                  device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """z (N, Z) and, for ``noise_mode='random'``, one (N, 1, r, r) noise map per layer of ``net.noise_layers()``."""
    layers = net.noise_layers() if noise_mode == "random" else []
    zs, maps = [], []
    for seed in seeds:
        g = torch.Generator(device).manual_seed(int(seed))
        zs.append(torch.randn((1, net.z_dim), generator=g, device=device))  # (1, Z)
        maps.append([torch.randn(layer.noise_shape(1), generator=g, device=device) for layer in layers])
    noise = [torch.cat(per_layer) for per_layer in zip(*maps)] if layers else None
    return torch.cat(zs), noise


def sample_slices(generator: Generator, label: int, seeds: list[int], truncation: float = 1.0,
                  noise_mode: str = "random", progress: Callable[[int, int], None] | None = None,
                  device: str | torch.device = "cpu", batch_size: int = BATCH) -> torch.Tensor:
    """Images (N, C, R, R), float32, in the network's range (about [-1, 1]); sample i depends only on ``seeds[i]``.

    ``progress(done, total)`` is called after each batch of ``batch_size`` seeds (it may raise to cancel).
    """
    if not 0.0 <= truncation <= 1.0:
        raise ValueError(f"truncation must be within [0, 1], got {truncation}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device)
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        z, noise = seeded_inputs(generator, chunk, noise_mode, device)
        labels = torch.full((len(chunk),), label, dtype=torch.long, device=device)
        out.append(generator(z, labels, truncation_psi=truncation, noise_mode=noise_mode, noise=noise))
        if progress is not None:
            progress(start + len(chunk), len(seeds))
    return torch.cat(out)  # (N, C, R, R)
