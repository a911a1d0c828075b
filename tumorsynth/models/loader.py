"""Build a family's Generator from a registry entry; cached once per worker process."""

from __future__ import annotations

import threading

from ..errors import CheckpointError
from .base import Generator
from .families import FAMILIES
from .registry import ModelEntry

_cache: dict[tuple, Generator] = {}
_lock = threading.Lock()


def resolve_device(requested: str) -> str:
    """'auto' picks CUDA when present. Called only inside worker children, never in a prefork parent."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_generator(entry: ModelEntry, device: str = "auto", **runtime) -> Generator:
    """``runtime``: serving options (e.g. ``precision``); a family gets those its registration declares in
    ``runtime_options`` (models/family.py), the others are dropped."""
    family = FAMILIES.get(entry.family)
    if family is None:
        raise CheckpointError(f"{entry.id}: no runtime for model family '{entry.family}'")
    options = {k: v for k, v in runtime.items() if k in family.runtime_options}
    key = (entry.id, entry.weights_sha256, device, tuple(sorted(options.items())))
    with _lock:
        if key not in _cache:
            _cache[key] = family.generator_class()(entry, resolve_device(device), **options)
        return _cache[key]


def clear_cache() -> None:
    with _lock:
        _cache.clear()
