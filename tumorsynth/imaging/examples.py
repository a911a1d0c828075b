"""A synthetic example mask (BraTS 2023 labels on the BraTS 240×240×155, 1 mm grid) for the demo and tests."""

from __future__ import annotations

import numpy as np


def example_mask(
    shape: tuple[int, int, int] = (240, 240, 155),
    centre: tuple[float, float, float] | None = None,
    radius_mm: float = 22.0,
    seed: int = 0,
) -> np.ndarray:
    """Nested, lumpy tumour: edema (2) around an enhancing rim (3) around a necrotic core (1)."""
    rng = np.random.default_rng(seed)
    centre = centre or (shape[0] * 0.62, shape[1] * 0.45, shape[2] * 0.55)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    offset = grid - np.asarray(centre, dtype=np.float32)[:, None, None, None]
    r = np.sqrt((offset**2).sum(0))
    theta = np.arctan2(offset[1], offset[0])
    phi = np.arctan2(offset[2], np.hypot(offset[0], offset[1]))
    a, b = rng.uniform(0.1, 0.2, 2)
    lumpy = radius_mm * (1 + a * np.sin(3 * theta + rng.uniform(0, 6)) + b * np.cos(2 * phi + rng.uniform(0, 6)))
    mask = np.zeros(shape, np.uint8)
    mask[r < lumpy * 1.6] = 2
    mask[r < lumpy] = 3
    mask[r < lumpy * 0.6] = 1
    return mask


def affine_1mm(shape: tuple[int, int, int] = (240, 240, 155)) -> np.ndarray:
    """RAS-ish 1 mm affine with the volume centre at the world origin."""
    aff = np.eye(4)
    aff[:3, 3] = -(np.asarray(shape) - 1) / 2
    return aff
