"""A model's request options (``options`` in a job request): declared once per family, checked in one place.

Each family declares its ``OptionSpec``s in ``models/{family}/options.py`` and registers them with its ``Family``
(torch-free, so the API can read them); presets write them into a checkpoint's ``config.json`` as ``"options"``.
The API checks a request with ``check_options`` before anything is stored or queued, and the runner calls the same
function, so the two cannot drift. Values are JSON numbers: a bool is not a number, and NaN or infinity is refused.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from ..errors import FieldError, InvalidRequest

OptionType = Literal["float", "int"]
Number = int | float


@dataclass(frozen=True)
class OptionSpec:
    """One option: its JSON type, default, inclusive bounds (``None``: unbounded) and whether ``null`` is allowed."""

    name: str
    type: OptionType
    default: Number | None
    min: Number | None = None
    max: Number | None = None
    nullable: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.type not in ("float", "int"):
            raise ValueError(f"option '{self.name}': type must be 'float' or 'int', not {self.type!r}")
        if self.default is None and not self.nullable:
            raise ValueError(f"option '{self.name}': a default of null needs nullable=True")

    @classmethod
    def from_config(cls, raw: Mapping) -> OptionSpec:
        return cls(
            **{k: raw[k] for k in ("name", "type", "default", "min", "max", "nullable", "description") if k in raw}
        )

    def as_config(self) -> dict:
        """What ``config.json`` and ``GET /v1/models`` carry."""
        return asdict(self)

    def with_default(self, default: Number | None) -> OptionSpec:
        return OptionSpec(self.name, self.type, default, self.min, self.max, self.nullable, self.description)


def family_options(family: str) -> tuple[OptionSpec, ...]:
    """The options a registered family declares (``models/{family}/options.py``); none for an unknown family."""
    from .families import FAMILIES  # families → family → options: imported when called, not at import time

    registered = FAMILIES.get(family)
    return registered.options if registered else ()


def checkpoint_options(config: Mapping) -> tuple[OptionSpec, ...]:
    """A checkpoint's options: its ``config.json`` ``"options"``, else its family's declaration (checkpoints written
    before options were recorded); each default taken from the checkpoint's ``sampling`` where it names one."""
    declared = config.get("options")
    specs = (
        tuple(OptionSpec.from_config(o) for o in declared)
        if declared is not None
        else family_options(str(config.get("family", "")))
    )
    sampling = config.get("sampling") or {}
    return tuple(s.with_default(sampling[s.name]) if s.name in sampling else s for s in specs)


def _type_error(spec: OptionSpec, value: object) -> str | None:
    if value is None:
        return None if spec.nullable else f"must be a number, not null; leave it out for the default {spec.default}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if spec.type == "int" else "a number"
        return f"must be {kind}, not {type(value).__name__} {value!r}"
    if spec.type == "int" and not isinstance(value, int):
        return f"must be an integer, not {value!r}"
    if not math.isfinite(value if isinstance(value, float) else 0.0) or (
        spec.type == "float" and isinstance(value, int) and abs(value) > sys.float_info.max
    ):
        return f"must be a finite number, not {value!r}"
    return None


def _bounds_error(spec: OptionSpec, value: Number) -> str | None:
    low = -math.inf if spec.min is None else spec.min
    high = math.inf if spec.max is None else spec.max
    if low <= value <= high:
        return None
    where = (
        f"within [{spec.min}, {spec.max}]"
        if spec.min is not None and spec.max is not None
        else (f">= {spec.min}" if spec.min is not None else f"<= {spec.max}")
    )
    return f"must be {where}, got {value}"


def resolve_options(
    specs: Sequence[OptionSpec], given: Mapping | None, model_id: str
) -> tuple[dict[str, Number | None], list[FieldError]]:
    """(every option with the given value or its default, ``[]``) or (``{}``, the problems with ``given``, each
    naming ``options.<name>``)."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        return {}, [FieldError("options", "must be a JSON object of option names to numbers")]
    by_name = {s.name: s for s in specs}
    errors: list[FieldError] = []
    for name, value in given.items():
        spec = by_name.get(name)
        if spec is None:
            takes = ", ".join(by_name) or "no options"
            errors.append(FieldError(f"options.{name}", f"{model_id} takes no option '{name}'; it takes: {takes}"))
            continue
        problem = _type_error(spec, value) or (None if value is None else _bounds_error(spec, value))
        if problem:
            errors.append(FieldError(f"options.{name}", problem))
    if errors:
        return {}, errors
    resolved: dict[str, Number | None] = {}
    for spec in specs:
        value = given.get(spec.name, spec.default)
        resolved[spec.name] = value if value is None or spec.type == "int" else float(value)
    return resolved, errors


def check_options(specs: Sequence[OptionSpec], given: Mapping | None, model_id: str) -> dict[str, Number | None]:
    """Every option resolved (given or default), or ``InvalidRequest`` naming each bad ``options.<name>``."""
    resolved, errors = resolve_options(specs, given, model_id)
    if errors:
        raise InvalidRequest("; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors)
    return resolved
