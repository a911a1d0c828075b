"""The vqgan family's registration (torch-free: the API and the CLI read it; the parts named here load lazily)."""

from __future__ import annotations

from ..family import Family
from .options import OPTIONS

FAMILY = Family(
    name="vqgan",
    task="class_to_roi",
    presets=("tiny", "demo", "paper"),
    configs="tumorsynth.models.vqgan.configs",
    generator="tumorsynth.models.vqgan.runner:VQGANGenerator",
    trainer="tumorsynth.training.vqgan:Trainer",
    train_config="tumorsynth.training.vqgan:VQGANTrainConfig",
    options=OPTIONS,
)
