"""What the trainers share: resumable state, per-epoch RNG streams, the optional perceptual loss, and the
torchrun/DDP plumbing (``training.distributed``): this process's rank and device, bf16 autocast on CUDA, DDP wrappers,
rank 0 alone writing, starting from a checkpoint's weights."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np
import torch

from .distributed import World, init_world

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from ..models.registry import ModelEntry

log = logging.getLogger(__name__)

# The trainer's config dataclass (``asdict`` goes into state.pt).
ConfigT = TypeVar("ConfigT", bound="DataclassInstance")


class Stateful(Protocol):
    """What a resume saves and restores: modules, optimisers and LR schedulers alike."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any) -> Any: ...


def epoch_rng(seed: int, *stream: int, rank: int = 0) -> np.random.Generator:
    """Seed torch and return a numpy generator for one (stage, epoch) stream: a resumed run draws what an
    uninterrupted one would have drawn.

    Under torchrun the numpy generator (the epoch's batch order, which every rank must share) is the same on every
    rank, while torch's stream (noise, masks, flips) is offset by ``rank``: ranks draw different noise for their
    different batches. Rank 0 draws what a single process draws.
    """
    torch.manual_seed(int(np.random.default_rng([seed, *stream]).integers(2**62)) + rank)
    return np.random.default_rng([seed, *stream, 1])


def split_record(ids: list[str], train_idx, val_idx) -> dict[str, Any]:
    """A ``training`` record's subject counts and validation subjects (indices into ``ids``)."""
    return {"subjects": {"train": len(train_idx), "val": len(val_idx)}, "validation_ids": [ids[i] for i in val_idx]}


def ema_with_warmup(decay: float):
    """``AveragedModel``'s ``avg_fn``: an exponential average whose decay grows to ``decay`` with the update count."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return averaged * d + current * (1 - d)

    return avg


def perceptual_loss(weights_path: str | None, weight: float, device):
    """MONAI's perceptual loss from a local MedicalNet weights file, or None (no weights are ever downloaded)."""
    if not weights_path or weight <= 0:
        return None
    from monai.losses import PerceptualLoss

    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"perceptual_weights {path} does not exist (no weights are downloaded)")
    return PerceptualLoss(
        spatial_dims=3,
        network_type="medicalnet_resnet10_23datasets",
        is_fake_3d=False,
        pretrained=True,
        pretrained_path=str(path),
    ).to(device)


class ResumableTrainer(Generic[ConfigT]):
    """``work_dir/state.pt`` (written atomically after every epoch) and ``work_dir/metrics.jsonl``.

    Subclasses set ``cfg``, ``work_dir``, ``device``, ``state`` (a dict with ``metrics``) and ``on_epoch``, and name
    in ``_resumable()`` the modules and optimisers whose ``state_dict`` a resume needs.
    """

    world: World = World()
    cfg: ConfigT
    work_dir: Path
    device: torch.device
    amp: bool
    state: dict[str, Any]
    on_epoch: Callable[[dict], None] | None

    def _resumable(self) -> dict[str, Stateful]:
        raise NotImplementedError

    # ----- torchrun / DDP / bf16 -------------------------------------------------------------------------------------
    def _join_world(self, device: str, amp: bool = True) -> None:
        """Set ``world`` (torchrun's process group, or one process), ``device`` (each rank its own GPU) and ``amp``
        (bf16 autocast: on CUDA where it is supported; CPUs train in float32)."""
        self.world = init_world(device)
        self._ddp: dict[str, torch.nn.Module] = {}
        self.device = torch.device(self.world.device(device))
        self.amp = amp and self.device.type == "cuda" and torch.cuda.is_bf16_supported()

    def _autocast(self, enabled: bool = True):
        # bf16 has float32's range, so no loss scaling is needed
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled and getattr(self, "amp", False))

    def _wrapped(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` under DistributedDataParallel when running under torchrun (made once, when first trained)."""
        if not self.world.enabled:
            return module
        if name not in self._ddp:
            self._ddp[name] = self.world.wrap(module)
        return self._ddp[name]

    def _write_on_main(self, write: Callable[[], ModelEntry]) -> ModelEntry:
        """Rank 0 runs ``write`` (which saves and returns a ModelEntry); every rank returns that entry, the others
        reading it from where rank 0 wrote it."""
        from ..models.registry import entry_at

        path = str(write().path) if self.is_main() else None
        return entry_at(Path(self.world.share(path)))

    def _load_weights(self, checkpoint_dir: Path, module: torch.nn.Module, model_config: dict):
        """Weights (not optimiser state) from a servable checkpoint whose network matches ``model_config``'s:
        resuming from weights alone, when ``state.pt`` is gone. Returns the checkpoint's entry."""
        from ..models.checkpoints import load_into
        from ..models.registry import entry_at

        entry = entry_at(Path(checkpoint_dir))
        if entry.config.get("network") != model_config["network"]:
            raise ValueError(
                f"init_from {checkpoint_dir}: its network differs from this config's (preset "
                f"'{getattr(self.cfg, 'preset', '?')}'); start from a checkpoint of the same preset"
            )
        load_into(module, entry, self.device)
        log.info("initialised from %s (%s)", entry.id, entry.weights_sha256[:12])
        return entry

    # ----- the checkpoint's record -----------------------------------------------------------------------------------
    def _initialised_from(self, checkpoint_dir: Path | str, entry: ModelEntry, **state: Any) -> None:
        """Apply the ``state`` updates and keep in ``self.state`` the checkpoint whose weights this run started from
        (``training_record`` reports it)."""
        self.state.update(**state, init_from=str(checkpoint_dir), init_sha256=entry.weights_sha256)

    def epoch_seconds(self, key: str = "seconds") -> float:
        """``key`` summed over every epoch's metrics row (across resumes), to 0.1."""
        return round(sum(r.get(key, 0.0) for r in self.state["metrics"]), 1)

    def training_record(
        self,
        what: dict[str, Any],
        *,
        threads: bool = True,
        then: dict[str, Any] | None = None,
        init_key: str = "init_from",
    ) -> dict[str, Any]:
        """The ``training`` record of a checkpoint's config: this trainer's config, ``what`` (the family's own keys:
        its data, final metrics, timings), where it ran (device, processes and, with ``threads``, threads per
        process), ``then`` (keys the family records after those), torch's version and, for a run started from a
        checkpoint's weights, that checkpoint and its weights' sha256 under ``init_key``. The families' key order is
        their own (config.json sorts keys)."""
        record = (
            {"config": asdict(self.cfg)}
            | what
            | {"device": str(self.device), "processes": self.world.size}
            | ({"threads": torch.get_num_threads()} if threads else {})
            | (then or {})
            | {"torch": torch.__version__}
        )
        if self.state.get("init_from"):
            record[init_key] = {"checkpoint": self.state["init_from"], "sha256": self.state["init_sha256"]}
        return record

    @property
    def state_path(self) -> Path:
        return self.work_dir / "state.pt"

    def is_main(self) -> bool:
        """Rank 0 of a torchrun job, or the only process: the one that writes state, metrics and checkpoints."""
        world = getattr(self, "world", None)
        return world is None or world.is_main

    def save_state(self) -> None:
        if not self.is_main():
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        blob = {"state": self.state, "config": asdict(self.cfg)}
        blob |= {name: part.state_dict() for name, part in self._resumable().items()}
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, self.state_path)

    def load_state(self) -> bool:
        if not self.state_path.is_file():
            return False
        blob = torch.load(self.state_path, map_location=self.device, weights_only=False)
        for name, part in self._resumable().items():
            part.load_state_dict(blob[name])
        self.state = blob["state"]
        return True

    def _log(self, row: dict) -> None:
        self.state["metrics"].append(row)
        if not self.is_main():
            if self.on_epoch:
                self.on_epoch(row)
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.on_epoch:
            self.on_epoch(row)
