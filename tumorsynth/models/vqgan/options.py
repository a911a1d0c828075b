"""The VQGAN's request options (torch-free: the API reads them); a checkpoint's ``sampling`` sets the defaults."""

from __future__ import annotations

from ..options import OptionSpec

OPTIONS = (
    OptionSpec(
        "temperature",
        "float",
        1.0,
        0.0,
        10.0,
        description="softmax temperature of token sampling; 0 takes the most likely token",
    ),
    OptionSpec(
        "choice_temperature",
        "float",
        4.5,
        0.0,
        100.0,
        description="MaskGIT: temperature of the confidence noise that picks which tokens to keep, "
        "annealed to 0 over the steps",
    ),
    OptionSpec(
        "guidance",
        "float",
        0.0,
        0.0,
        20.0,
        description="classifier-free guidance weight w: (1 + w)·conditional − w·unconditional; 0 = off",
    ),
    OptionSpec(
        "top_k",
        "int",
        None,
        1,
        65536,
        nullable=True,
        description="AR: sample only among the k most likely tokens; null = all",
    ),
)
