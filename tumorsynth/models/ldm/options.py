"""The LDM takes no request options: its sampler and steps are the ``sampler`` field."""

from __future__ import annotations

from ..options import OptionSpec

OPTIONS: tuple[OptionSpec, ...] = ()
