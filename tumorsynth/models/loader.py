"""Build a family's Generator from a registry entry; cached once per worker process."""

from __future__ import annotations

import threading

from ..errors import CheckpointError
from .base import Generator
from .families import FAMILIES
from .registry import ModelEntry

# Serving options a family's constructor takes besides (entry, device): models/precision.py
RUNTIME_OPTIONS = {"ldm": ("precision", "batch_invariant"), "tavit": ("precision",)}

_cache: dict[tuple, Generator] = {}
_lock = threading.Lock()


def resolve_device(requested: str) -> str:
    """'auto' picks CUDA when present. Called only inside worker children, never in a prefork parent."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_generator(entry: ModelEntry, device: str = "auto", **runtime) -> Generator:
    """``runtime``: serving options (e.g. ``precision``), passed to the families that take them."""
    options = {k: v for k, v in runtime.items() if k in RUNTIME_OPTIONS.get(entry.family, ())}
    key = (entry.id, entry.weights_sha256, device, tuple(sorted(options.items())))
    with _lock:
        if key not in _cache:
            family = FAMILIES.get(entry.family)
            if family is None:
                raise CheckpointError(f"{entry.id}: no runtime for model family '{entry.family}'")
            _cache[key] = family.generator_class()(entry, resolve_device(device), **options)
        return _cache[key]


def clear_cache() -> None:
    with _lock:
        _cache.clear()
