"""The ldm family's registration (torch-free: the API and the CLI read it; the parts named here load lazily)."""

from __future__ import annotations

from ..family import Family
from .options import OPTIONS

FAMILY = Family(
    name="ldm",
    task="mask_to_volume",
    presets=("tiny", "demo", "paper"),
    configs="tumorsynth.models.ldm.configs",
    generator="tumorsynth.models.ldm.runner:LDMGenerator",
    trainer="tumorsynth.training.ldm:Trainer",
    train_config="tumorsynth.training.ldm:LDMTrainConfig",
    options=OPTIONS,
    runtime_options=("precision", "batch_invariant"),  # LDMGenerator(entry, device, precision, batch_invariant)
)
