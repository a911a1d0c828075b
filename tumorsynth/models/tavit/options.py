"""TA-ViT takes no request options: its inputs are the volumes, and it samples directly."""

from __future__ import annotations

from ..options import OptionSpec

OPTIONS: tuple[OptionSpec, ...] = ()
