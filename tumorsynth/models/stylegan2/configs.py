"""StyleGAN2 presets (full config.json contents) and untrained checkpoints for development and tests.

The task is ``class_to_slice``: a tumour class (meningioma, glioma, pituitary, the classes of the common 2D tumour
MRI sets and of the paper) in, 2D slices out, with no file inputs. One class-conditional generator serves all
classes (the paper trained one generator per class; a checkpoint lists the classes it was trained on).

- ``paper``: 256×256, the paper's resolution, with the stylegan2-ada-pytorch ``paper256`` sizes (z, w 512; 8 mapping
  layers; channels ``min(16384 / r, 512)``).
- ``demo``: 64×64, z and w of 64, 2 mapping layers (stylegan2-ada-pytorch's small-data ``cifar`` config; 8 layers
  at lr × 0.01 learn too slowly for a CPU budget of tens of thousands of images), channels ``min(1024 / r, 64)``
  (64 → 16 at 64 px); trains on a 2-core CPU in about 45 minutes (``training/configs/stylegan2-demo.json``).
- ``tiny``: 16×16 and a few thousand weights per layer, for tests.

Outputs are written as single-slice NIfTI volumes of shape (H, W, 1) (every NIfTI reader, and the service's own, opens
a 3D volume; the third axis is the slice) with intensities in [0, 1]: each training slice is divided by its 99.5th
percentile of non-zero pixels and clipped, so 0 is background and 1 the brightest tissue of the slice. The pixel
spacing is nominal (``fov_mm`` / H): 2D slice sets rarely record it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..checkpoints import save_checkpoint
from ..registry import ModelEntry
from .generator import Generator

CLASSES = ["meningioma", "glioma", "pituitary"]
FOV_MM = 240.0
SLICE_MM = 1.0
DEFAULT_TRUNCATION = 1.0


def _preset(resolution: int, generator: dict, discriminator: dict) -> dict:
    common = {"resolution": resolution, "num_classes": len(CLASSES), "img_channels": 1}
    return {
        "family": "stylegan2",
        "task": "class_to_slice",
        "classes": list(CLASSES),
        "modalities": ["slice"],
        "inputs": [],
        "output": {
            "shape": [resolution, resolution, 1],
            "spacing": [FOV_MM / resolution] * 2 + [SLICE_MM],
            "note": "one 2D slice per sample, stored as an (H, W, 1) NIfTI volume; the spacing is nominal",
        },
        "fov_mm": FOV_MM,
        "samplers": [{"name": "direct", "default_steps": 1, "min_steps": 1, "max_steps": 1}],
        "default_sampler": "direct",
        "sampling": {"truncation": DEFAULT_TRUNCATION, "noise_mode": "random"},
        "intensity": {
            "normalisation": "each slice divided by its 99.5th percentile of non-zero pixels, clipped to "
            "[0, 1]; the network works on 2x - 1",
            "range": [0.0, 1.0],
        },
        "network": common | generator,
        "discriminator": common | discriminator,
    }


PRESETS: dict[str, dict] = {
    "tiny": _preset(
        16,
        {"z_dim": 32, "w_dim": 32, "mapping_layers": 2, "channel_base": 256, "channel_max": 32},
        {"channel_base": 256, "channel_max": 32},
    ),
    "demo": _preset(
        64,
        {"z_dim": 64, "w_dim": 64, "mapping_layers": 2, "channel_base": 1024, "channel_max": 64},
        {"channel_base": 1024, "channel_max": 64},
    ),
    "paper": _preset(
        256,
        {"z_dim": 512, "w_dim": 512, "mapping_layers": 8, "channel_base": 16384, "channel_max": 512},
        {"channel_base": 16384, "channel_max": 512},
    ),
}

UNTRAINED_CARD = """\
# {model_id} — UNTRAINED: OUTPUTS ARE NOISE

**This network has random weights. It was never trained. Its slices are not images of anything. Do not use its
outputs for anything but testing the service.**

- Architecture: class-conditional StyleGAN2 (Karras et al. 2020; skip generator, residual discriminator), preset
  `{preset}`, {shape} pixel slices, classes {classes}.
- Weights: random initialisation with `torch.manual_seed({seed})`.
- Trained on: nothing.
"""


def model_config(preset: str, classes: list[str] | None = None) -> dict:
    """A preset's config, optionally for other classes (the class embedding's width follows them)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    if classes is not None:
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be a non-empty list of distinct names, got {classes}")
        config["classes"] = list(classes)
        config["network"]["num_classes"] = config["discriminator"]["num_classes"] = len(classes)
    return config


def build_network(config: dict) -> Generator:
    """The generator a config describes, with fresh weights."""
    return Generator(**config["network"])


def create_untrained(
    out_dir: Path, preset: str = "tiny", name: str | None = None, version: str = "1", seed: int = 0
) -> ModelEntry:
    """Write a randomly initialised checkpoint to ``out_dir/{name}@{version}`` and return its registry entry."""
    config = model_config(preset)
    config.update(
        name=name or f"untrained-{preset}",
        version=str(version),
        trained=False,
        trained_on="nothing (random initialisation)",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(config)
    card = UNTRAINED_CARD.format(
        model_id=f"stylegan2/{config['name']}@{config['version']}",
        preset=preset,
        shape="×".join(map(str, config["output"]["shape"][:2])),
        classes=", ".join(config["classes"]),
        seed=seed,
    )
    return save_checkpoint(
        Path(out_dir) / f"{config['name']}@{config['version']}", config=config, module=network, card=card
    )
