"""TA-ViT presets (full config.json contents) and untrained checkpoints for development and tests.

Every preset covers the BraTS in-plane field of view, 240×240 mm, with its own slice grid; slices run along the
input's third voxel axis (axial for BraTS-format data) at the input's own slice spacing.

- ``paper``: 240×240 slices (1 mm), an 8× encoder to 30×30 = 900 tokens of width 256, the paper's latent size.
  The paper gives neither the encoder's other widths nor the transformer's depth; ours (64/128/256, 6 blocks of 8
  heads) and the segmenter's (residual UNet 32-256) are our choice.
- ``demo``: 96×96 slices (2.5 mm, 12×12 tokens of width 64) and 1.9 MB of weights (0.47 M), trainable on a 2-core
  CPU in about 10 minutes on 40 phantoms (a forward and backward pass of 8 slices took 0.45 s on one busy core; the
  full-resolution levels are kept narrow, 8 channels, because they cost the most).
- ``tiny``: 32×32 slices (7.5 mm, 4×4 tokens) and 72 k weights, for tests.

``tiny`` and ``demo`` predict the residual T1C − T1 and see one neighbouring slice either side (2.5D); ``paper``
predicts the residual on single slices. All three also take the tumour regions as full-resolution input channels.
None of this is the paper's (it predicts T1C from single 2D slices, conditioned only through the latent
segmentation): see ``network`` for why.

``flair=False`` builds the T1-only variant (the paper found no significant difference between T1 and T1 + FLAIR).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..checkpoints import save_checkpoint
from ..registry import ModelEntry
from .network import TumourAwareSynthesis

FOV_MM = [240.0, 240.0]  # in-plane; the slice axis keeps the input's spacing
LABELS = ["background", "necrotic core", "oedema", "enhancing tumour"]  # the segmenter's classes (BraTS 2023 0-3)


def _preset(grid: list[int], network: dict, slice_batches: int) -> dict:
    return {
        "family": "tavit",
        "task": "contrast_synthesis",
        "classes": [],
        "modalities": ["t1c"],
        "inputs": input_specs(flair=True),
        "output": {
            "shape": list(grid),
            "spacing": [f / n for f, n in zip(FOV_MM, grid)],
            "note": "a 2D slice grid: each slice along the input's third voxel axis is resampled to this grid "
            "and the output is returned in the input T1's shape and affine",
        },
        "fov_mm": list(FOV_MM),
        "samplers": [{"name": "direct", "default_steps": 1, "min_steps": 1, "max_steps": 1}],
        "default_sampler": "direct",
        "options": [],  # request options: none (models/options.py)
        "intensity": {
            "normalisation": "z-score over non-zero voxels per input volume (T1, FLAIR)",
            "output": "T1C as z-scores over the brain (its non-zero voxels); 0 where the input T1 is 0",
        },
        "labels": list(LABELS),
        # total_steps = slice_batches: the brain's slices go through in this many batches, one progress step each
        "inference": {"slice_batches": slice_batches, "max_batch_slices": 16},
        "network": {"spatial_dims": 2, "image_channels": 2, **network},
    }


def input_specs(flair: bool) -> list[dict]:
    specs = [{"name": "t1", "kind": "image", "required": True}]
    if flair:
        specs.append({"name": "flair", "kind": "image", "required": True})
    return [*specs, {"name": "mask", "kind": "mask", "required": False}]


def image_inputs(config: dict) -> list[str]:
    """The image inputs a checkpoint takes, in the order of the network's channels."""
    return [i["name"] for i in config["inputs"] if i["kind"] == "image"]


PRESETS: dict[str, dict] = {
    "tiny": _preset(
        [32, 32],
        {
            "seg_channels": [8, 16],
            "seg_strides": [2],
            "seg_num_res_units": 1,
            "channels": [8, 16, 32],
            "cond_latent_channels": [4, 8, 16],
            "depth": 1,
            "num_heads": 2,
            "mlp_ratio": 2.0,
            "norm": "batch",
            "residual": True,
            "slice_context": 1,
            "regions_in_input": True,
        },
        slice_batches=4,
    ),
    "demo": _preset(
        [96, 96],
        {
            "seg_channels": [8, 16, 32],
            "seg_strides": [2, 2],
            "seg_num_res_units": 1,
            "channels": [8, 32, 64],
            "cond_latent_channels": [4, 16, 32],
            "depth": 4,
            "num_heads": 4,
            "mlp_ratio": 2.0,
            "norm": "batch",
            "residual": True,
            "slice_context": 1,
            "regions_in_input": True,
        },
        slice_batches=8,
    ),
    "paper": _preset(
        [240, 240],
        {
            "seg_channels": [32, 64, 128, 256],
            "seg_strides": [2, 2, 2],
            "seg_num_res_units": 2,
            "channels": [64, 128, 256],
            "cond_latent_channels": [32, 64, 128],
            "depth": 6,
            "num_heads": 8,
            "mlp_ratio": 4.0,
            "norm": "batch",
            "residual": True,
            "slice_context": 0,
            "regions_in_input": True,
        },
        slice_batches=10,
    ),
}

UNTRAINED_CARD = """\
# {model_id} — UNTRAINED: OUTPUTS ARE NOISE

**This network has random weights. It was never trained. Its T1C is not an image of anything. Do not use its
outputs for anything but testing the service.**

- Architecture: segmentation predictor (MONAI residual UNet) + TA-ViT (arXiv 2409.01622), preset `{preset}`.
- Inputs: {inputs}. Slice grid {shape} voxels of {spacing} mm.
- Weights: random initialisation with `torch.manual_seed({seed})`.
- Trained on: nothing.
"""


def model_config(preset: str, flair: bool = True) -> dict:
    """A preset's config, for the T1 + FLAIR network or (``flair=False``) the T1-only one."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    config["inputs"] = input_specs(flair)
    config["network"]["image_channels"] = len(image_inputs(config))
    return config


def build_network(config: dict) -> TumourAwareSynthesis:
    """The network a config describes, with fresh weights."""
    return TumourAwareSynthesis(**config["network"])


def create_untrained(
    out_dir: Path,
    preset: str = "tiny",
    name: str | None = None,
    version: str = "1",
    seed: int = 0,
    flair: bool = True,
) -> ModelEntry:
    """Write a randomly initialised checkpoint to ``out_dir/{name}@{version}`` and return its registry entry."""
    config = model_config(preset, flair)
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
        model_id=f"tavit/{config['name']}@{config['version']}",
        preset=preset,
        inputs=", ".join(image_inputs(config)) + " (mask optional)",
        shape="×".join(map(str, config["output"]["shape"])),
        spacing="×".join(f"{s:g}" for s in config["output"]["spacing"]),
        seed=seed,
    )
    return save_checkpoint(
        Path(out_dir) / f"{config['name']}@{config['version']}", config=config, module=network, card=card
    )
