"""Training configs: JSON files named ``{family}-{size}.json`` (``ldm-demo``, ``vqgan-tiny``, ...)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

CONFIG_DIR = Path(__file__).parent


def load_config(cls, family: str, spec: str | Path, overrides: dict):
    """``cls`` (a dataclass) from a JSON file, or from ``CONFIG_DIR/{spec}.json``; ``None`` overrides are ignored."""
    path = Path(spec)
    if not path.is_file():
        path = CONFIG_DIR / f"{spec}.json"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(CONFIG_DIR.glob(f"{family}-*.json")))
        raise FileNotFoundError(f"no training config '{spec}'; give a JSON file or one of {known}")
    raw = json.loads(path.read_text())
    unknown = sorted(set(raw) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}")
    return cls(**(raw | {k: v for k, v in overrides.items() if v is not None}))
