"""Model discovery from ``TUMORSYNTH_MODEL_DIR``, without importing torch (the API reads it).

Layout: ``{model_dir}/{family}/{name}@{version}/config.json`` beside ``model.safetensors`` and ``MODEL_CARD.md``.
``config.json`` carries the constructor arguments (``network``), the serving contract (task, classes, modalities,
inputs, output grid, samplers, request options) and the weights' sha256 that workers verify before loading.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, ModelNotFound
from ..imaging.intensity import offered_scales
from .options import OptionSpec, checkpoint_options

FORMAT_VERSION = 1
MODEL_ID = re.compile(r"^(?P<family>[a-z0-9]+)/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)@(?P<version>[A-Za-z0-9_.-]+)$")


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    default_steps: int
    min_steps: int
    max_steps: int


@dataclass(frozen=True)
class InputSpec:
    name: str
    kind: str  # "mask" or "image"
    required: bool = True


@dataclass(frozen=True)
class ModelEntry:
    id: str
    family: str
    name: str
    version: str
    task: str
    classes: tuple[str, ...]
    modalities: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    output_shape: tuple[int, ...]
    output_spacing: tuple[float, ...]
    samplers: tuple[SamplerSpec, ...]
    default_sampler: str
    weights_sha256: str
    weights_format: str
    trained_on: str
    trained: bool
    path: Path
    options: tuple[OptionSpec, ...] = ()  # request options, defaults from the checkpoint (models/options.py)
    config: dict = field(repr=False, compare=False, hash=False, default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.path / self.config["weights"]["file"]

    def sampler(self, name: str | None) -> SamplerSpec:
        wanted = name or self.default_sampler
        for s in self.samplers:
            if s.name == wanted:
                return s
        raise KeyError(wanted)

    def input(self, name: str) -> InputSpec | None:
        return next((i for i in self.inputs if i.name == name), None)

    def info(self) -> dict:
        """The public description served by ``GET /v1/models``."""
        return {
            "id": self.id,
            "family": self.family,
            "version": self.version,
            "task": self.task,
            "classes": list(self.classes),
            "modalities": list(self.modalities),
            "inputs": [{"name": i.name, "kind": i.kind, "required": i.required} for i in self.inputs],
            "output": {"shape": list(self.output_shape), "spacing": list(self.output_spacing)},
            "samplers": [
                {"name": s.name, "default_steps": s.default_steps, "min_steps": s.min_steps, "max_steps": s.max_steps}
                for s in self.samplers
            ],
            "default_sampler": self.default_sampler,
            "options": [o.as_config() for o in self.options],
            "intensity": offered_scales(self.config, self.modalities),
            "checkpoint": {"sha256": self.weights_sha256, "format": self.weights_format, "trained_on": self.trained_on},
            "trained": self.trained,
        }


def parse_model_id(model_id: str) -> tuple[str, str, str]:
    m = MODEL_ID.match(model_id or "")
    if not m:
        raise ModelNotFound.for_field("model", f"'{model_id}' is not a model id of the form family/name@version")
    return m["family"], m["name"], m["version"]


def entry_from_config(path: Path, config: dict) -> ModelEntry:
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}")
    try:
        family, name, version = config["family"], config["name"], str(config["version"])
        return ModelEntry(
            id=f"{family}/{name}@{version}",
            family=family,
            name=name,
            version=version,
            task=config["task"],
            classes=tuple(config.get("classes", [])),
            modalities=tuple(config["modalities"]),
            inputs=tuple(InputSpec(**i) for i in config.get("inputs", [])),
            output_shape=tuple(config["output"]["shape"]),
            output_spacing=tuple(float(s) for s in config["output"]["spacing"]),
            samplers=tuple(SamplerSpec(**s) for s in config["samplers"]),
            default_sampler=config["default_sampler"],
            weights_sha256=config["weights"]["sha256"],
            weights_format=config["weights"].get("format", "safetensors"),
            trained_on=config.get("trained_on", "unknown"),
            trained=bool(config.get("trained", False)),
            path=path,
            options=checkpoint_options(config),
            config=config,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}/config.json is missing or has a malformed field: {exc}") from exc


def entry_at(path: Path) -> ModelEntry:
    """The registry entry of the checkpoint folder ``path`` (its ``config.json``)."""
    path = Path(path)
    return entry_from_config(path, json.loads((path / "config.json").read_text()))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_weights(entry: ModelEntry) -> None:
    """Refuse weights whose sha256 differs from the one recorded in config.json."""
    if not entry.weights_path.is_file():
        raise CheckpointError(f"{entry.id}: weights file {entry.weights_path} is missing")
    actual = sha256_file(entry.weights_path)
    if actual != entry.weights_sha256:
        raise CheckpointError(
            f"{entry.id}: weights sha256 {actual[:12]}… does not match the recorded {entry.weights_sha256[:12]}…"
        )


class ModelRegistry:
    """Reads every ``config.json`` under the model folder; cheap enough to rescan on demand."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)

    def scan(self) -> dict[str, ModelEntry]:
        found: dict[str, ModelEntry] = {}
        if not self.model_dir.is_dir():
            return found
        for cfg in sorted(self.model_dir.glob("*/*@*/config.json")):
            try:
                entry = entry_at(cfg.parent)
            except (CheckpointError, json.JSONDecodeError, OSError):
                continue  # a broken checkpoint folder is not served; `tumorsynth models` reports it
            found[entry.id] = entry
        return found

    def list(self) -> list[ModelEntry]:
        return sorted(self.scan().values(), key=lambda e: e.id)

    def get(self, model_id: str) -> ModelEntry:
        parse_model_id(model_id)
        entry = self.scan().get(model_id)
        if entry is None:
            known = ", ".join(self.scan()) or "none installed"
            raise ModelNotFound.for_field("model", f"unknown model '{model_id}'; available: {known}")
        return entry
