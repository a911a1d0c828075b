"""A model family's contract: what a family registers once, and everything else reads.

A family is a folder under ``models/`` with ``family.py`` (torch-free: the API, the settings check and the CLI's
help read it), ``options.py``, ``configs.py`` (presets, ``build_network``, ``create_untrained``) and ``runner.py``
(the worker's ``Generator``). The heavy parts are named by dotted path and imported only when used, so listing the
families or checking a request never imports torch. The trainer lives in ``training/`` (a layer above ``models/``):
it is named here so the CLI finds it, and only the CLI imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import OptionSpec

if TYPE_CHECKING:
    from .base import Generator
    from .registry import ModelEntry

# Serving options a worker hands the loader (from Settings, workers/pipeline.py; their numerics: precision.py). A
# family declares in ``runtime_options`` those its generator's constructor takes; the loader drops the others.
SERVING_OPTIONS = ("precision", "batch_invariant")


def load_object(target: str) -> Any:
    """``"package.module:attribute"`` → the attribute, importing the module."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"'{target}' is not of the form package.module:attribute")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Family:
    """One model family: its name (the ``family`` of a model id), the task it serves, its config presets, and where
    its network builder, generator (runner) and trainer live; ``options`` are the request options it accepts,
    ``runtime_options`` the serving options (``SERVING_OPTIONS``) its generator takes as keyword arguments."""

    name: str
    task: str
    presets: tuple[str, ...]
    configs: str  # module with PRESETS, build_network(config) and create_untrained(out_dir, preset, ...)
    generator: str  # "module:Class" of the worker's Generator, built as Class(entry, device, **runtime options)
    trainer: str  # "module:Class" of the trainer (training/), built by the CLI
    train_config: str  # "module:Class" of the trainer's config dataclass (its ``load(spec, **overrides)``)
    options: tuple[OptionSpec, ...] = ()
    runtime_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.name.isascii() and self.name.isalnum() and self.name.islower()):
            raise ValueError(f"family name {self.name!r} must be lower-case letters and digits (it is a model id part)")
        if "tiny" not in self.presets:
            raise ValueError(f"family {self.name}: every family has a 'tiny' preset (the contract test runs it)")
        unknown = [o for o in self.runtime_options if o not in SERVING_OPTIONS]
        if unknown:
            raise ValueError(
                f"family {self.name}: runtime_options {unknown} are not serving options a worker passes; "
                f"choose from {', '.join(SERVING_OPTIONS)}"
            )

    def generator_class(self) -> Callable[..., Generator]:
        return load_object(self.generator)

    def build_network(self, config: dict) -> Any:
        """The network (torch module) that ``config`` (a checkpoint's config.json contents) describes."""
        return importlib.import_module(self.configs).build_network(config)

    def preset(self, name: str) -> dict:
        return dict(importlib.import_module(self.configs).PRESETS[name])

    def create_untrained(self, out_dir: Path, preset: str = "tiny", **kwargs: Any) -> ModelEntry:
        """A randomly initialised checkpoint of ``preset`` under ``out_dir`` (plumbing and tests only)."""
        return importlib.import_module(self.configs).create_untrained(out_dir, preset=preset, **kwargs)

    def trainer_class(self) -> Any:
        return load_object(self.trainer)

    def train_config_class(self) -> Any:
        return load_object(self.train_config)
