"""The registered model families: the one list that the loader, the CLI, the settings and the API read.

Adding a family is a folder under ``models/`` (see ``family.py``) and one line in ``_REGISTERED``. Torch-free.
"""

from __future__ import annotations

from ..errors import ModelNotFound
from .family import Family
from .ldm.family import FAMILY as LDM
from .stylegan2.family import FAMILY as STYLEGAN2
from .tavit.family import FAMILY as TAVIT
from .vqgan.family import FAMILY as VQGAN

_REGISTERED: tuple[Family, ...] = (
    LDM,
    VQGAN,
    TAVIT,
    STYLEGAN2,
)

FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family``; a second family of the same name is refused (two folders claiming one model-id prefix)."""
    if family.name in FAMILIES and FAMILIES[family.name] != family:
        raise ValueError(f"model family '{family.name}' is registered twice")
    FAMILIES[family.name] = family
    return family


for _family in _REGISTERED:
    register(_family)


def family_names() -> list[str]:
    return sorted(FAMILIES)


def get_family(name: str) -> Family:
    family = FAMILIES.get(name)
    if family is None:
        raise ModelNotFound.for_field("model", f"no model family '{name}'; known: {', '.join(family_names())}")
    return family
