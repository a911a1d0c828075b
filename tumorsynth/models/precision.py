"""Numerics of serving: the weights' dtype, and batch-invariant kernels where a batch must not change a bit.

bf16 weights: the network is stored in bf16 on CUDA (``precision="auto"``), not autocast per call: autocast re-casts
every weight on every call, which made a batch-1 UNet call slower than fp32 on an H200 (34.5 vs 20.1 ms, issue 15).
The scheduler's arithmetic stays fp32 (the runner casts ε back). tests/models/test_precision.py holds bf16 outputs to
fp32 within a tolerance on the CPU; benchmarks/gpu_job.py measures both on a GPU.

Batch invariance: a sample drawn alone and in a batch take the same random draws (one generator per sample), but
the kernels themselves may round differently by batch size. On the CPU two do: oneDNN's convolutions pick blocked
layouts by shape, and a ``Linear`` on one row runs a matrix-vector product where several rows run a matrix product
(seen in MONAI's timestep embedding). ``batch_invariant=True`` turns oneDNN off around sampling and computes 2D
``Linear`` inputs row by row, so a job's output is bit-identical alone and batched; it costs the CPU ~2× on
decoding (the native 3D convolution is slower), so it is an option, off by default.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")


def weights_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a CUDA device that has it, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class RowwiseLinear(nn.Linear):
    """``nn.Linear`` whose 2D inputs go one row at a time: the same kernel whatever the batch size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2 and x.shape[0] > 1:
            return torch.cat([F.linear(row, self.weight, self.bias) for row in x.split(1)])
        return super().forward(x)


def make_batch_invariant(module: nn.Module) -> nn.Module:
    """Every plain ``nn.Linear`` inside ``module`` becomes a ``RowwiseLinear`` (same parameters, same state dict)."""
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = RowwiseLinear
    return module


def batch_invariance(enabled: bool):
    """Around sampling: oneDNN off when ``enabled`` (process-wide: one sampling thread per worker process)."""
    return torch.backends.mkldnn.flags(enabled=False) if enabled else nullcontext()
