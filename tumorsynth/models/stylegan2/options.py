"""StyleGAN2's request option (torch-free: the API reads it); a checkpoint's ``sampling`` sets the default."""

from __future__ import annotations

from ..options import OptionSpec

OPTIONS = (
    OptionSpec(
        "truncation",
        "float",
        1.0,
        0.0,
        1.0,
        description="truncation ψ: w is pulled toward the class's mean w; 1 = none, 0 = the class mean",
    ),
)
