"""Tumour regions of interest from BraTS-format subjects, as the VQGAN papers train on.

Zhou et al. cut a 128×128×128 mm cube around the tumour and normalise it to [-1, 1]. Here: the cube is centred on
the centroid of the whole-tumour mask (of the brain when a subject has no mask), its axes run along the subject's
voxel axes, and it is resampled to the model's grid (e.g. 32³ at 4 mm) after a Gaussian pre-filter against
aliasing. Intensities: ``brats.normalise`` z-scores over the brain, clipped to ±``z_clip`` and divided by it, so the
background is 0 and the range is [-1, 1]. Each ROI keeps its world affine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..imaging.geometry import GridMapping
from .brats import Subject, find_subjects, load_subject, normalise


@dataclass
class ROISet:
    ids: list[str]
    rois: torch.Tensor  # (N, C, *grid) float32 in [-1, 1]
    classes: torch.Tensor  # (N,) long: 0 = unknown, k + 1 = classes[k]
    affines: list[np.ndarray]  # (4, 4) ROI voxel → world, per subject


def tumour_centre(seg: np.ndarray | None, image: np.ndarray) -> np.ndarray:
    """Voxel coordinates (3,) of the whole-tumour centroid, or of the non-zero image's when there is no tumour."""
    region = seg > 0 if seg is not None and np.any(seg) else np.any(np.asarray(image) != 0, axis=0)
    if not region.any():
        raise ValueError("the subject has neither a tumour mask nor non-zero image voxels to centre a ROI on")
    return np.asarray(ndimage.center_of_mass(region), dtype=np.float64)


def roi_mapping(
    in_shape: Sequence[int], affine: np.ndarray, centre: np.ndarray, grid: Sequence[int], spacing: Sequence[float]
) -> GridMapping:
    """The grid of ``grid`` voxels of ``spacing`` mm centred on voxel ``centre``, along the input's voxel axes."""
    in_shape3, grid3 = _three(in_shape, "in_shape"), _three(grid, "grid")
    affine = np.asarray(affine, dtype=np.float64)
    in_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    step = np.asarray(spacing, dtype=np.float64) / in_spacing
    offset = np.asarray(centre, dtype=np.float64) - step * (np.asarray(grid, dtype=np.float64) - 1) / 2
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = np.diag(step)
    voxel_map[:3, 3] = offset
    return GridMapping(in_shape3, grid3, step, offset, affine @ voxel_map)


def _three(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"{name} must hold 3 voxel counts (X, Y, Z), got {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def extract_roi(
    image: np.ndarray,
    seg: np.ndarray | None,
    affine: np.ndarray,
    grid: Sequence[int],
    spacing: Sequence[float],
    z_clip: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(C, X, Y, Z) raw intensities → (ROI (C, *grid) in [-1, 1], its affine)."""
    image = normalise(image)
    mapping = roi_mapping(image.shape[1:], affine, tumour_centre(seg, image), grid, spacing)
    sigma = np.maximum(mapping.step - 1.0, 0.0) * 0.5  # voxels; none when not downsampling
    if np.any(sigma > 0):
        image = np.stack([ndimage.gaussian_filter(c, sigma, mode="constant") for c in image])
    roi = mapping.to_grid(image, order=1)
    return (np.clip(roi, -z_clip, z_clip) / z_clip).astype(np.float32), mapping.grid_affine


def load_rois(
    data_dir: str | Path,
    classes: Sequence[str],
    grid: Sequence[int],
    spacing: Sequence[float],
    modalities: Sequence[str] = ("flair",),
    z_clip: float = 5.0,
    max_subjects: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ROISet:
    subjects: list[Subject] = find_subjects(data_dir)
    if not subjects:
        raise FileNotFoundError(f"no BraTS-format subjects under {data_dir}")
    subjects = subjects[:max_subjects] if max_subjects else subjects
    rois, labels, affines = [], [], []
    for i, s in enumerate(subjects):
        data = load_subject(s, tuple(modalities))
        roi, affine = extract_roi(data["image"], data["seg"], data["affine"], grid, spacing, z_clip)
        rois.append(torch.from_numpy(roi))
        affines.append(affine)
        c = s.tumor_class
        labels.append(list(classes).index(c) + 1 if c is not None and c in classes else 0)
        if progress:
            progress(i + 1, len(subjects))
    return ROISet([s.id for s in subjects], torch.stack(rois), torch.tensor(labels), affines)
