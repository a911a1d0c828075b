"""Checkpoint files: ``{config, weights, format_version}``; a network is rebuilt with ``Model(**config["network"])``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .registry import (
    FORMAT_VERSION,
    ModelEntry,
    entry_from_config,
    sha256_file,
    verify_weights,
)

WEIGHTS_FILE = "model.safetensors"

# The family's own network class comes back out of ``load_into``, so its runner reads typed submodules and buffers.
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def save_checkpoint(out_dir: Path, *, config: dict, module: torch.nn.Module, card: str) -> ModelEntry:
    """Write weights, config (with the weights' sha256) and the model card; return the registry entry.

    ``config`` holds everything but ``weights`` and ``format_version``, which are filled in here.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    full = dict(config)
    full["format_version"] = FORMAT_VERSION
    full["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256_file(weights), "format": "safetensors"}
    (out_dir / "config.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    (out_dir / "MODEL_CARD.md").write_text(card)
    return entry_from_config(out_dir, full)


def load_state_dict(entry: ModelEntry, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Verify the sha256 recorded in config.json, then load the safetensors weights."""
    verify_weights(entry)
    if entry.weights_format != "safetensors":
        raise CheckpointError(f"{entry.id}: weights format {entry.weights_format!r} is not supported")
    return load_file(str(entry.weights_path), device=str(device))


def load_into(module: ModuleT, entry: ModelEntry, device: str | torch.device = "cpu") -> ModuleT:
    state = load_state_dict(entry, device)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{entry.id}: weights do not fit the network in config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return module.to(device).eval()
