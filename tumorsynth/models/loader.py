"""Build a family's Generator from a registry entry; cached once per worker process."""

from __future__ import annotations

import importlib
import threading

from ..errors import CheckpointError
from .base import Generator
from .registry import ModelEntry

FAMILIES = {
    "ldm": "tumorsynth.models.ldm.runner:LDMGenerator",
    "vqgan": "tumorsynth.models.vqgan.runner:VQGANGenerator",
    "tavit": "tumorsynth.models.tavit.runner:TAViTGenerator",
    "stylegan2": "tumorsynth.models.stylegan2.runner:StyleGAN2Generator",
}

_cache: dict[tuple[str, str, str], Generator] = {}
_lock = threading.Lock()


def resolve_device(requested: str) -> str:
    """'auto' picks CUDA when present. Called only inside worker children, never in a prefork parent."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_generator(entry: ModelEntry, device: str = "auto") -> Generator:
    key = (entry.id, entry.weights_sha256, device)
    with _lock:
        if key not in _cache:
            target = FAMILIES.get(entry.family)
            if target is None:
                raise CheckpointError(f"{entry.id}: no runtime for model family '{entry.family}'")
            module, _, cls = target.partition(":")
            _cache[key] = getattr(importlib.import_module(module), cls)(entry, resolve_device(device))
        return _cache[key]


def clear_cache() -> None:
    with _lock:
        _cache.clear()
