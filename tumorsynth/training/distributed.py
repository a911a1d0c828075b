"""Multi-process data-parallel training (``torchrun``): the few decisions every trainer shares.

``torchrun --nproc_per_node=N -m tumorsynth.cli train ldm ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
each process then trains on every N-th batch of the epoch's (seeded, identical) order, PyTorch's
``DistributedDataParallel`` averages the gradients, and only rank 0 writes state, metrics and the checkpoint.
NCCL on CUDA, gloo on the CPU (the tests run two CPU processes). Without ``WORLD_SIZE`` > 1 nothing changes: one
process, no process group, the same code path.

DDP hooks a module's ``forward``. Where a trainer's step does not fit that (StyleGAN2's lazy R1 and path-length
regularisers differentiate twice and call the mapping and synthesis networks apart; TA-ViT's batch norm keeps
running statistics per process), the trainer averages the gradients itself after ``backward`` with one flat
all-reduce, as NVlabs' stylegan2-ada-pytorch and stylegan3 ``training_loop`` do, and averages running statistics.
Every branch that decides whether a collective runs (a skipped non-finite step) is decided collectively
(``all_agree``): one rank skipping an all-reduce that the others enter would hang them all.
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
        return batches[self.rank : usable : self.size]

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
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return float(t) / self.size

    def all_agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on every rank: a branch all ranks take together."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def average_gradients(self, params) -> None:
        """Each gradient := its mean over ranks (one flat all-reduce; a missing gradient counts as zero, so every
        rank sends the same layout)."""
        if not self.enabled:
            return
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        dist.all_reduce(flat)
        flat /= self.size
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view_as(p)

    def average_(self, tensors) -> None:
        """Floating-point tensors (running statistics) := their mean over ranks, in place."""
        if not self.enabled:
            return
        for t in tensors:
            if t.is_floating_point():
                dist.all_reduce(t.data)
                t.data /= self.size

    def broadcast_(self, tensors, src: int = 0) -> None:
        """Tensors := rank ``src``'s, in place (state that a rank updates from its own batch, kept identical)."""
        if not self.enabled:
            return
        for t in tensors:
            dist.broadcast(t.data, src)

    def share(self, obj, src: int = 0):
        """Rank ``src``'s (picklable) ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def _comm_device(self) -> torch.device:
        """NCCL reduces CUDA tensors only; gloo CPU ones."""
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


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
