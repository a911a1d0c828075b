"""What the three trainers share: resumable state, per-epoch RNG streams, the optional perceptual loss."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch


def epoch_rng(seed: int, *stream: int) -> np.random.Generator:
    """Seed torch and return a numpy generator for one (stage, epoch) stream: a resumed run draws what an
    uninterrupted one would have drawn."""
    torch.manual_seed(int(np.random.default_rng([seed, *stream]).integers(2**62)))
    return np.random.default_rng([seed, *stream, 1])


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
    return PerceptualLoss(spatial_dims=3, network_type="medicalnet_resnet10_23datasets", is_fake_3d=False,
                          pretrained=True, pretrained_path=str(path)).to(device)


class ResumableTrainer:
    """``work_dir/state.pt`` (written atomically after every epoch) and ``work_dir/metrics.jsonl``.

    Subclasses set ``cfg``, ``work_dir``, ``device``, ``state`` (a dict with ``metrics``) and ``on_epoch``, and name
    in ``_resumable()`` the modules and optimisers whose ``state_dict`` a resume needs.
    """

    def _resumable(self) -> dict[str, object]:
        raise NotImplementedError

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
