"""LDM presets (full config.json contents) and untrained checkpoints for development and tests.

- ``paper``: the grid and sizes of Truong et al. 2024: 4×128×128×64 images, an 8×32×32×16 latent, a UNet of base
  width 352 (their better model). The paper gives neither the autoencoder's widths nor the UNet's deeper ones; ours
  (autoencoder 64/128/128, UNet 352 at every level with attention below the top, 176 M weights) are our choice.
- ``demo``: a 48×48×32 grid (4×4×5 mm) and 8 MB of weights, trainable on a 2-core CPU in about 35 minutes
  (``make demo-models``: 21 CPU minutes on one thread).
- ``tiny``: a 32×32×16 grid over the same field of view and a few thousand weights per block, so that a 10-step
  sample of two volumes takes about a second on a CPU. For tests and the demo only.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..checkpoints import save_checkpoint
from ..registry import ModelEntry
from .network import MaskConditionedLDM
from .options import OPTIONS
from .schedulers import SCHEDULE, sampler_specs

FOV_MM = [192.0, 192.0, 160.0]
MODALITIES = ["t1", "t1c", "t2", "flair"]
CLASSES = ["LGG", "HGG"]


def _preset(grid: list[int], network: dict) -> dict:
    return {
        "family": "ldm",
        "task": "mask_to_volume",
        "classes": list(CLASSES),
        "modalities": list(MODALITIES),
        "inputs": [{"name": "mask", "kind": "mask", "required": True}],
        "output": {"shape": list(grid), "spacing": [f / n for f, n in zip(FOV_MM, grid)]},
        "fov_mm": list(FOV_MM),
        "samplers": sampler_specs(),
        "default_sampler": "dpm++",
        "options": [o.as_config() for o in OPTIONS],
        "schedule": dict(SCHEDULE),
        # Intensities the autoencoder is trained on and decodes to (the paper's preprocessing): per modality,
        # z-scores over the non-zero (brain) voxels; the background is 0.
        "intensity": {"normalisation": "z-score over non-zero voxels per modality", "background": 0.0},
        "network": {
            "spatial_dims": 3,
            "image_channels": len(MODALITIES),
            "latent_channels": 8,
            "mask_channels": 3,
            "num_classes": len(CLASSES),
            **network,
        },
    }


PRESETS: dict[str, dict] = {
    "tiny": _preset(
        [32, 32, 16],
        {
            "ae_channels": [8, 16, 16],
            "ae_num_res_blocks": 1,
            "ae_attention_levels": [False, False, False],
            "ae_norm_num_groups": 8,
            "unet_channels": [16, 32],
            "unet_num_res_blocks": 1,
            "unet_attention_levels": [False, True],
            "unet_num_head_channels": 16,
            "unet_norm_num_groups": 8,
        },
    ),
    "demo": _preset(
        [48, 48, 32],
        {
            "ae_channels": [8, 16, 32],
            "ae_num_res_blocks": 1,
            "ae_attention_levels": [False, False, False],
            "ae_norm_num_groups": 8,
            "unet_channels": [32, 64],
            "unet_num_res_blocks": 1,
            "unet_attention_levels": [False, True],
            "unet_num_head_channels": 16,
            "unet_norm_num_groups": 8,
        },
    ),
    "paper": _preset(
        [128, 128, 64],
        {
            "ae_channels": [64, 128, 128],
            "ae_num_res_blocks": 2,
            "ae_attention_levels": [False, False, False],
            "ae_norm_num_groups": 32,
            "unet_channels": [352, 352, 352],
            "unet_num_res_blocks": 2,
            "unet_attention_levels": [False, True, True],
            "unet_num_head_channels": 88,
            "unet_norm_num_groups": 32,
        },
    ),
}

UNTRAINED_CARD = """\
# {model_id} — UNTRAINED: OUTPUTS ARE NOISE

**This network has random weights. It was never trained. Every image it generates is noise shaped by an untrained
decoder, not MRI. Do not use its outputs for anything but testing the service.**

- Architecture: mask-conditioned 3D latent diffusion (Truong et al., SPIE Medical Imaging 2024), preset `{preset}`.
- Model grid: {shape} voxels of {spacing} mm ({fov} mm field of view), modalities {modalities}.
- Weights: random initialisation with `torch.manual_seed({seed})`.
- Trained on: nothing.
"""


def build_network(config: dict) -> MaskConditionedLDM:
    """The network a config describes, with fresh weights."""
    return MaskConditionedLDM(**config["network"])


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
        model_id=f"ldm/{config['name']}@{config['version']}",
        preset=preset,
        shape="×".join(map(str, config["output"]["shape"])),
        spacing="×".join(f"{s:g}" for s in config["output"]["spacing"]),
        fov="×".join(f"{f:g}" for f in config["fov_mm"]),
        modalities=", ".join(config["modalities"]),
        seed=seed,
    )
    return save_checkpoint(
        Path(out_dir) / f"{config['name']}@{config['version']}", config=config, module=network, card=card
    )
