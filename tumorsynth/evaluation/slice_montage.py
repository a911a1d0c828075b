"""A StyleGAN2 montage to look at: per class, generated slices beside held-out real ones.

One row per class: ``per_class`` generated slices (seeds 0, 1, … of that class at truncation ψ), then as many real
slices of the class spread evenly over the held-out set, each 64 px slice enlarged ×3 by pixel repetition (no
smoothing, so a mass of 2 pixels stays as sharp, or as absent, as the network made it). Intensities are shown as the
service writes them ([0, 1] → 0–255, no windowing), so a dimmer or brighter sample than the real ones shows too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.slices import SliceSet
from ..models.registry import ModelEntry
from .slice_scores import generate_like

SCALE = 3
GAP = 4
LABEL_W = 110
HEADER_H = 18


def _tile(img: torch.Tensor) -> Image.Image:
    pixels = (img.clamp(0, 1).numpy() * 255).round().astype(np.uint8)  # (R, R)
    pic = Image.fromarray(pixels)
    return pic.resize((pic.width * SCALE, pic.height * SCALE), Image.Resampling.NEAREST)


def stylegan2_montage(
    entry: ModelEntry,
    real: SliceSet,
    out: Path,
    per_class: int = 6,
    truncation: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Write the PNG to ``out`` and return it; ``real`` holds slices labelled by ``entry.classes``."""
    classes = list(entry.classes)
    res = int(real.images.shape[-1])
    tile = res * SCALE
    width = LABEL_W + 2 * per_class * (tile + GAP) + GAP * 4
    canvas = Image.new("L", (width, HEADER_H + len(classes) * (tile + GAP)), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((LABEL_W, 2), f"generated (psi {truncation:g})", fill=255)
    real_x = LABEL_W + per_class * (tile + GAP) + GAP * 4
    draw.text((real_x, 2), "real, held out", fill=255)
    for k, name in enumerate(classes):
        y = HEADER_H + k * (tile + GAP)
        draw.text((4, y + tile // 2), name, fill=255)
        labels = torch.full((per_class,), k, dtype=torch.long)
        fake = generate_like(entry, labels, truncation, seed + k * per_class, device)  # seeds differ per class
        own = torch.nonzero(real.labels == k).flatten()
        picks = own[np.linspace(0, len(own) - 1, per_class).round().astype(int)] if len(own) else own
        for i in range(per_class):
            canvas.paste(_tile(fake[i, 0]), (LABEL_W + i * (tile + GAP), y))
        for i, j in enumerate(picks.tolist()):
            canvas.paste(_tile(real.images[j, 0]), (real_x + i * (tile + GAP), y))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
