"""Multi-process data-parallel training (``torchrun``): the few decisions every trainer shares.

``torchrun --nproc_per_node=N -m tumorsynth.cli train ldm ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
each process then trains on every N-th batch of the epoch's (seeded, identical) order, PyTorch's
``DistributedDataParallel`` averages the gradients, and only rank 0 writes state, metrics and the checkpoint.
NCCL on CUDA, gloo on the CPU (the tests run two CPU processes). Without ``WORLD_SIZE`` > 1 nothing changes: one
process, no process group, the same code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """Each process takes its own GPU (``cuda:LOCAL_RANK``); CPUs are shared."""
        if self.enabled and str(requested).startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return requested

    def shard(self, batches: list) -> list:
        """This rank's batches: every ``size``-th one, the count the same on every rank (DDP needs it)."""
        if not self.enabled:
            return batches
        usable = len(batches) - len(batches) % self.size or len(batches)
        return batches[self.rank:usable:self.size]

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DDP when distributed (gradients averaged across ranks), else itself."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if next(module.parameters()).is_cuda else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        """A per-rank figure (a loss) averaged across ranks, for the logs."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.size


def init_world(device: str) -> World:
    """Join the process group that ``torchrun`` describes in the environment, or return a one-process world."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank=rank, size=size, local_rank=local)
