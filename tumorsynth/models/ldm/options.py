"""The LDM's request options (torch-free: the API reads them); a checkpoint's ``options`` set the defaults.

Its sampler and steps are the ``sampler`` field. ``guidance`` is classifier-free guidance on the tumour class (Ho &
Salimans 2022): the UNet is trained with the class dropped to "unconditional" 10 % of the time, so it can be asked for
both and extrapolated, (1 + w)·conditional − w·unconditional. The mask always conditions both passes: guidance
strengthens what the *class* adds (an LGG's bright, non-enhancing core; an HGG's rim) and leaves the mask's work
alone. Each guided step runs the UNet on twice the batch.
"""

from __future__ import annotations

from ..options import OptionSpec

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "guidance",
        "float",
        0.0,
        0.0,
        20.0,
        description="classifier-free guidance weight w on the tumour class: (1 + w)·conditional − "
        "w·unconditional; 0 = off (one UNet pass per step); no effect without a tumor_class",
    ),
)
