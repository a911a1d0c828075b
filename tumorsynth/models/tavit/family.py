"""The tavit family's registration (torch-free: the API and the CLI read it; the parts named here load lazily)."""

from __future__ import annotations

from ..family import Family
from .options import OPTIONS

FAMILY = Family(
    name="tavit",
    task="contrast_synthesis",
    presets=("tiny", "demo", "paper"),
    configs="tumorsynth.models.tavit.configs",
    generator="tumorsynth.models.tavit.runner:TAViTGenerator",
    trainer="tumorsynth.training.tavit:Trainer",
    train_config="tumorsynth.training.tavit:TAViTTrainConfig",
    options=OPTIONS,
    runtime_options=("precision",),  # TAViTGenerator(entry, device, precision): bf16 weights on CUDA
)
