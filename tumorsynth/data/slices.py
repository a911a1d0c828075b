"""2D training slices for StyleGAN2: a folder of slices per class, or axial slices cut from BraTS-format volumes.

Two layouts are read (``load_slices``):

- **slice folders**: ``DIR/<class>/*.png|*.jpg|*.nii|*.nii.gz``, one sub-folder per class (the common meningioma /
  glioma / pituitary sets are laid out so). A NIfTI file must hold one slice (2D, or 3D with one slice).
- **BraTS-format volumes** (and phantoms), when ``DIR`` holds BraTS-named subjects: the axial slices through the
  tumour of one contrast (``modality``, T1C by default: the 2D sets are contrast-enhanced T1), at most
  ``per_subject`` per subject, spread evenly over the tumour's extent. BraTS has only gliomas (LGG and HGG, both
  gliomas), so every such slice is labelled through ``class_map``, by default ``{"HGG": "glioma", "LGG": "glioma"}``;
  a subject of unknown class is labelled ``glioma`` too (BraTS is a glioma set). Such data trains a one-class model.

Every slice is padded to a square (with 0), resized to the model grid and divided by its 99.5th percentile of
non-zero pixels, clipped to [0, 1] (``prepare``): 2D sets come as 8-bit images of unknown scale, so the scale is the
slice's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .brats import find_subjects, load_nifti, load_subject

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz")
DEFAULT_CLASS_MAP = {"HGG": "glioma", "LGG": "glioma"}
BRATS_DEFAULT_CLASS = "glioma"


@dataclass
class SliceSet:
    images: torch.Tensor  # (N, 1, R, R) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64 index into classes
    classes: list[str]
    sources: list[str] = field(default_factory=list)  # file or subject id per slice
    layout: str = "folders"  # "folders" or "brats"


def prepare(image: np.ndarray, resolution: int) -> np.ndarray:
    """A 2D slice → (R, R) float32 in [0, 1]: zero-padded to a square, resized (area), scaled by its 99.5th pct."""
    x = np.nan_to_num(np.asarray(image, dtype=np.float32))
    x = np.clip(x - min(0.0, float(x.min())), 0, None)  # a negative background (e.g. z-scores) becomes 0
    h, w = x.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = x
    t = torch.from_numpy(square)[None, None]
    t = F.interpolate(
        t,
        size=(resolution, resolution),
        mode="area" if side >= resolution else "bilinear",
        **({} if side >= resolution else {"align_corners": False}),
    )[0, 0]
    nz = t[t > 0]
    scale = float(torch.quantile(nz, 0.995)) if nz.numel() else 1.0
    return (t / (scale or 1.0)).clamp(0, 1).numpy()


def read_image(path: Path) -> np.ndarray:
    """One slice as a 2D float array (grey levels for PNG/JPEG)."""
    if path.name.endswith((".nii", ".nii.gz")):
        data = np.asarray(load_nifti(path).get_fdata(dtype=np.float32))
        data = data.reshape([n for n in data.shape if n != 1] or [1])
        if data.ndim != 2:
            raise ValueError(f"{path} holds a volume of shape {data.shape}; a slice folder needs 2D slices")
        return data
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32)


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and any(_is_image(f) for f in p.iterdir()))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def load_slices(
    root: str | Path,
    resolution: int,
    classes: list[str] | None = None,
    *,
    modality: str = "t1c",
    class_map: dict[str, str] | None = None,
    per_subject: int = 8,
    max_per_class: int | None = None,
) -> SliceSet:
    """Slices of ``root`` (either layout) on an R×R grid; ``classes`` fixes the label order (default: found)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no data folder at {root}")
    if find_subjects(root):
        pairs = list(brats_slices(root, modality, class_map or DEFAULT_CLASS_MAP, per_subject))
        layout = "brats"
    else:
        found = [(f.name, p) for f in class_folders(root) for p in sorted(f.iterdir()) if _is_image(p)]
        pairs = [(name, read_image(p), str(p.relative_to(root))) for name, p in found]
        layout = "folders"
    if not pairs:
        raise ValueError(
            f"{root} holds neither class folders of slices (DIR/<class>/*.png|*.nii.gz) nor BraTS-format subjects"
        )
    names = classes or _ordered({name for name, _, _ in pairs})
    kept, counts = [], dict.fromkeys(names, 0)
    for name, image, source in pairs:
        if name in counts and (max_per_class is None or counts[name] < max_per_class):
            counts[name] += 1
            kept.append((names.index(name), prepare(image, resolution), source))
    if not kept:
        raise ValueError(f"none of the slices in {root} belongs to the classes {names}")
    return SliceSet(
        images=torch.from_numpy(np.stack([k[1] for k in kept]))[:, None],
        labels=torch.tensor([k[0] for k in kept], dtype=torch.long),
        classes=list(names),
        sources=[k[2] for k in kept],
        layout=layout,
    )


def _ordered(names: set[str]) -> list[str]:
    """The paper's classes first, in its order (meningioma, glioma, pituitary), then any others sorted."""
    from ..models.stylegan2.configs import CLASSES

    return [c for c in CLASSES if c in names] + sorted(names - set(CLASSES))


def brats_slices(root: Path, modality: str, class_map: dict[str, str], per_subject: int):
    """(class, axial slice, source) for the slices through each subject's tumour (all brain slices if no mask)."""
    for subject in find_subjects(root):
        data = load_subject(subject, (modality,))
        image, seg = data["image"][0], data["seg"]
        label = class_map.get(subject.tumor_class or "", BRATS_DEFAULT_CLASS)
        for z in tumour_levels(image, seg, per_subject):
            yield label, np.rot90(image[:, :, z]), f"{subject.id}:z={z}"  # displayed as the PNG sets are


def tumour_levels(image: np.ndarray, seg: np.ndarray | None, n: int) -> list[int]:
    """Up to ``n`` axial levels spread over the tumour (over the brain when there is no mask)."""
    area = (seg > 0).sum(axis=(0, 1)) if seg is not None and (seg > 0).any() else (image != 0).sum(axis=(0, 1))
    levels = np.nonzero(area >= 0.25 * area.max())[0]
    if len(levels) == 0:
        return []
    pick = np.unique(np.linspace(0, len(levels) - 1, num=min(n, len(levels))).round().astype(int))
    return [int(levels[i]) for i in pick]
