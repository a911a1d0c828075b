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

GPU_BATCH = 64  # seeds per forward pass on a GPU (the batch; the benchmark prints its peak memory)
CPU_FEATURE_BYTES = 8 * 2**20  # on the CPU: a batch's largest feature map about within the caches


def batch_size_for(net: Generator, device: torch.device) -> int:
    """Seeds per forward pass. On the CPU batching pays while a batch's features stay near the caches: measured on
    this 2-core machine (benchmarks/stylegan2_throughput.py), 64 px demo slices go 1.4× faster in batches of 16 than
    one by one and slower again at 64, while at 256 px (33 MB of features per slice) a batch of 3 is 15-30 % slower
    than single slices. So the CPU batch is what keeps the largest map under ``CPU_FEATURE_BYTES``; a GPU's 64."""
    if device.type != "cpu":
        return GPU_BATCH
    dtype_bytes = torch.finfo(net.synthesis_dtype).bits // 8
    largest = max(layer.weight.shape[1] * layer.resolution**2 for layer in net.noise_layers()) * dtype_bytes
    return max(1, min(GPU_BATCH, CPU_FEATURE_BYTES // largest))


def seeded_inputs(
    net: Generator, seeds: list[int], noise_mode: str, device: torch.device
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """z (N, Z) and, for ``noise_mode='random'``, one (N, 1, r, r) noise map per layer of ``net.noise_layers()``."""
    layers = net.noise_layers() if noise_mode == "random" else []
    zs, maps = [], []
    for seed in seeds:
        g = torch.Generator(device).manual_seed(int(seed))
        zs.append(torch.randn((1, net.z_dim), generator=g, device=device))  # (1, Z)
        maps.append([torch.randn(layer.noise_shape(1), generator=g, device=device) for layer in layers])
    noise = [torch.cat(per_layer) for per_layer in zip(*maps)] if layers else None
    return torch.cat(zs), noise


def sample_slices(
    generator: Generator,
    label: int,
    seeds: list[int],
    truncation: float = 1.0,
    noise_mode: str = "random",
    progress: Callable[[int, int], None] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
) -> torch.Tensor:
    """Images (N, C, R, R), float32, in the network's range (about [-1, 1]); sample i depends only on ``seeds[i]``.

    ``progress(done, total)`` is called after each batch of ``batch_size`` seeds (default ``batch_size_for``; it may
    raise to cancel).
    """
    if not 0.0 <= truncation <= 1.0:
        raise ValueError(f"truncation must be within [0, 1], got {truncation}")
    device = torch.device(device)
    batch_size = batch_size_for(generator, device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        z, noise = seeded_inputs(generator, chunk, noise_mode, device)
        labels = torch.full((len(chunk),), label, dtype=torch.long, device=device)
        out.append(generator(z, labels, truncation_psi=truncation, noise_mode=noise_mode, noise=noise))
        if progress is not None:
            progress(start + len(chunk), len(seeds))
    return torch.cat(out)  # (N, C, R, R)
