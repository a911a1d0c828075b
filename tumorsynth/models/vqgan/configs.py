"""VQGAN presets (full config.json contents) and untrained checkpoints for development and tests.

The task is ``class_to_roi``: a tumour class in, a tumour-centred region of interest out, with no file inputs. Every
preset covers the papers' 128 mm cube around the tumour centre; only the voxel size changes.

- ``paper``: Zhou et al. 2023 and the poster: 128³ at 1 mm, FLAIR, an 8³ token grid (five levels, /16), a codebook
  of 1024, an 8-layer transformer of width 512 (our reading of "GPT-2-like"; the papers give no widths for the
  encoder, ours are 32/64/128/128/256).
- ``demo``: 32³ at 4 mm and the same 8³ = 512 tokens, a codebook of 256 (8-dimensional), 4-layer transformers of
  width 128; both stages took 41 min of epochs on one thread of a busy 2-core CPU (``training/configs/vqgan-demo.json``,
  120 phantoms).
- ``tiny``: 16³ at 8 mm, 4³ = 64 tokens, a codebook of 64, 2-layer transformers of width 64. For tests only.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from ..checkpoints import save_checkpoint
from ..registry import ModelEntry
from .network import ClassConditionalVQGAN
from .options import OPTIONS

ROI_MM = 128.0
CLASSES = ["LGG", "HGG"]
MODALITIES = ["flair"]
MASKGIT_STEPS = {"default_steps": 8, "min_steps": 4, "max_steps": 16}
# ROI intensities: z-scores over the brain (``data.brats.normalise``), clipped to ±Z_CLIP and divided by it.
Z_CLIP = 5.0


def sampler_specs(num_tokens: int, with_ar: bool = True) -> list[dict]:
    specs = [{"name": "maskgit", **MASKGIT_STEPS}]
    if with_ar:
        specs.append({"name": "ar", "default_steps": num_tokens, "min_steps": num_tokens, "max_steps": num_tokens})
    return specs


def num_tokens(network: dict) -> int:
    factor = 2 ** (len(network["channels"]) - 1)
    return math.prod(n // factor for n in network["grid"])


def _preset(side: int, network: dict) -> dict:
    network = {
        "spatial_dims": 3,
        "in_channels": len(MODALITIES),
        "grid": [side] * 3,
        "num_classes": len(CLASSES),
        **network,
    }
    return {
        "family": "vqgan",
        "task": "class_to_roi",
        "classes": list(CLASSES),
        "modalities": list(MODALITIES),
        "inputs": [],
        "output": {"shape": [side] * 3, "spacing": [ROI_MM / side] * 3},
        "roi": {"size_mm": ROI_MM, "centre": "the whole-tumour centroid; the ROI's centre is the world origin"},
        "samplers": sampler_specs(num_tokens(network), network.get("ar_depth") != 0),
        "default_sampler": "maskgit",
        "sampling": {o.name: o.default for o in OPTIONS},
        "options": [o.as_config() for o in OPTIONS],
        "intensity": {
            "normalisation": f"z-score over brain voxels per modality, clipped to ±{Z_CLIP:g} and divided "
            f"by {Z_CLIP:g}",
            "range": [-1.0, 1.0],
            "z_clip": Z_CLIP,
        },
        "network": network,
    }


def with_modalities(config: dict, modalities: list[str]) -> dict:
    """A copy of a preset for other modalities (one input channel each)."""
    config = copy.deepcopy(config)
    config["modalities"] = list(modalities)
    config["network"]["in_channels"] = len(modalities)
    return config


PRESETS: dict[str, dict] = {
    "tiny": _preset(
        16,
        {
            "channels": [8, 16, 16],
            "num_res_units": 1,
            "norm_num_groups": 4,
            "embed_dim": 8,
            "num_codes": 64,
            "code_dim": 4,
            "transformer_dim": 64,
            "transformer_depth": 2,
            "transformer_heads": 4,
            "ar_depth": 2,
        },
    ),
    "demo": _preset(
        32,
        {
            "channels": [8, 32, 48],
            "num_res_units": 1,
            "norm_num_groups": 8,
            "embed_dim": 32,
            "num_codes": 256,
            "code_dim": 8,
            "transformer_dim": 128,
            "transformer_depth": 4,
            "transformer_heads": 4,
            "mlp_ratio": 3.0,
            "ar_depth": 4,
        },
    ),
    "paper": _preset(
        128,
        {
            "channels": [32, 64, 128, 128, 256],
            "num_res_units": 1,
            "norm_num_groups": 16,
            "embed_dim": 64,
            "num_codes": 1024,
            "code_dim": 8,
            "transformer_dim": 512,
            "transformer_depth": 8,
            "transformer_heads": 8,
            "ar_depth": 8,
        },
    ),
}

UNTRAINED_CARD = """\
# {model_id} — UNTRAINED: OUTPUTS ARE NOISE

**This network has random weights. It was never trained. Every volume it generates is a random token grid decoded
by an untrained decoder, not MRI. Do not use its outputs for anything but testing the service.**

- Architecture: class-conditional 3D VQGAN with an importance-guided masked transformer (Zhou et al. 2023 and
  poster), preset `{preset}`.
- Model grid: a {shape} voxel ROI of {spacing} mm around the tumour centre, modalities {modalities}.
- Weights: random initialisation with `torch.manual_seed({seed})`.
- Trained on: nothing.
"""


def build_network(config: dict) -> ClassConditionalVQGAN:
    """The network a config describes, with fresh weights."""
    return ClassConditionalVQGAN(**config["network"])


def create_untrained(
    out_dir: Path, preset: str = "tiny", name: str | None = None, version: str = "1", seed: int = 0
) -> ModelEntry:
    """Write a randomly initialised checkpoint to ``out_dir/{name}@{version}`` and return its registry entry."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
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
        model_id=f"vqgan/{config['name']}@{config['version']}",
        preset=preset,
        shape="×".join(map(str, config["output"]["shape"])),
        spacing="×".join(f"{s:g}" for s in config["output"]["spacing"]),
        modalities=", ".join(config["modalities"]),
        seed=seed,
    )
    return save_checkpoint(
        Path(out_dir) / f"{config['name']}@{config['version']}", config=config, module=network, card=card
    )
