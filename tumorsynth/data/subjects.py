"""One subject on a model's grid, the same way for training, evaluation and benchmarks; and the train/val split.

The family decides the grid (``imaging.geometry.fit_to_grid`` for the LDM's 3D grid, ``models.tavit.slices.
slice_mapping`` for TA-ViT's in-plane grid that keeps every slice) and passes it in, so this module imports no model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..imaging.geometry import GridMapping, fit_to_grid
from .brats import MODALITIES, Subject, crop_to_nonzero, load_subject, normalise

# (volume shape, affine, grid shape, field of view in mm) → the mapping to the model grid
MapToGrid = Callable[[tuple[int, ...], np.ndarray, Sequence[int], Sequence[float]], GridMapping]


def prepare_subject(
    subject: Subject,
    grid_shape: Sequence[int],
    fov_mm: Sequence[float],
    modalities: Sequence[str] = MODALITIES,
    *,
    to_grid: MapToGrid = fit_to_grid,
    crop: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One BraTS subject → (image (C, *grid) z-scored over the brain, labels (*grid) BraTS 2023, zeros without a
    segmentation). ``crop`` first cuts the volume to the brain's bounding box (the LDM's field of view is the
    brain's, not the scanner's)."""
    data = load_subject(subject, tuple(modalities))
    image, seg, affine = normalise(data["image"]), data["seg"], data["affine"]
    if crop:
        cropped = crop_to_nonzero(image, seg, affine=affine)
        if cropped.affine is None:  # crop_to_nonzero shifts every affine it is given
            raise RuntimeError(f"subject {subject.id!r}: cropping lost the volume's affine")
        image, seg, affine = cropped.image, cropped.seg, cropped.affine
    mapping = to_grid(image.shape[1:], affine, grid_shape, fov_mm)
    grid_image = mapping.to_grid(image, order=1).astype(np.float32)
    grid_labels = (
        mapping.to_grid(seg, order=0).astype(np.uint8) if seg is not None else np.zeros(grid_image.shape[1:], np.uint8)
    )
    return grid_image, grid_labels


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices of ``n`` subjects; at least one of each when ``n > 1`` and ``val_fraction > 0``."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1) if n > 1 and val_fraction > 0 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])
