"""The stylegan2 family's registration (torch-free: the API and the CLI read it; the parts named here load lazily)."""

from __future__ import annotations

from ..family import Family
from .options import OPTIONS

FAMILY = Family(
    name="stylegan2",
    task="class_to_slice",
    presets=("tiny", "demo", "paper"),
    configs="tumorsynth.models.stylegan2.configs",
    generator="tumorsynth.models.stylegan2.runner:StyleGAN2Generator",
    trainer="tumorsynth.training.stylegan2:Trainer",
    train_config="tumorsynth.training.stylegan2:StyleGAN2TrainConfig",
    options=OPTIONS,
    runtime_options=("precision",),  # StyleGAN2Generator(entry, device, precision)
)
