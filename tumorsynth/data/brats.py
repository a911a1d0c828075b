"""BraTS-format folders: find the subjects, load one, normalise and crop it as the model's training expects.

Two file namings are read, both one folder per subject (nested class folders such as ``HGG/`` and ``LGG/`` are
fine):

- BraTS 2019-2021: ``<id>/<id>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` (labels {0, 1, 2, 4});
- BraTS 2023-2024: ``<id>/<id>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg`` (labels {0, 1, 2, 3}).

Everywhere in the service the modalities are called ``t1, t1c, t2, flair`` and masks use the BraTS 2023 labels, so
the loader renames the former and converts the latter.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypedDict

import nibabel as nib
import numpy as np

from ..imaging.labels import to_brats2023

MODALITIES = ("t1", "t1c", "t2", "flair")
CLASSES = ("HGG", "LGG")


@dataclass(frozen=True)
class Naming:
    separator: str
    files: dict[str, str]  # canonical modality (and "seg") -> file suffix
    convention: str  # the label convention that BraTS release uses


NAMINGS = {
    "brats2019": Naming("_", {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}, "brats2019"),
    "brats2023": Naming("-", {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}, "brats2023"),
}
_PATTERNS = {
    name: re.compile(
        rf"^(?P<id>.+?){re.escape(n.separator)}(?P<suffix>{'|'.join(n.files.values())})\.nii(\.gz)?$", re.IGNORECASE
    )
    for name, n in NAMINGS.items()
}
_CLASS_IN_NAME = re.compile(r"(?<![A-Za-z])(HGG|LGG)(?![A-Za-z])", re.IGNORECASE)


@dataclass(frozen=True)
class Subject:
    id: str
    paths: dict[str, Path]  # canonical modality -> image file
    seg: Path | None
    label_convention: str | None  # from subjects.csv, else what the naming's BraTS release uses
    tumor_class: str | None = None  # "HGG", "LGG" or unknown
    naming: str | None = None


# What load_subject returns ("class" is a keyword, hence the functional form).
LoadedSubject = TypedDict(
    "LoadedSubject",
    {
        "id": str,
        "image": np.ndarray,  # float32 (C, X, Y, Z)
        "seg": "np.ndarray | None",  # uint8, BraTS 2023 labels
        "affine": np.ndarray,  # float64 (4, 4)
        "class": "str | None",
        "modalities": tuple[str, ...],
    },
)


class Crop(NamedTuple):
    image: np.ndarray
    seg: np.ndarray | None
    box: tuple[slice, slice, slice]
    affine: np.ndarray | None  # the cropped volume's voxel -> world map


def file_name(subject_id: str, key: str, naming: str) -> str:
    """``<id>_t1ce.nii.gz`` (brats2019) or ``<id>-t1c.nii.gz`` (brats2023) for a canonical modality or "seg"."""
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {sorted(NAMINGS)}, got {naming!r}")
    scheme = NAMINGS[naming]
    if key not in scheme.files:
        raise ValueError(f"key must be one of {sorted(scheme.files)}, got {key!r}")
    return f"{subject_id}{scheme.separator}{scheme.files[key]}.nii.gz"


def find_subjects(root: str | Path) -> list[Subject]:
    """Every subject under ``root``, sorted by id; a folder holding only a mask is not a subject."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no BraTS folder at {root}")
    table = _read_subjects_csv(root / "subjects.csv")
    groups: dict[str, dict] = {}
    for path in sorted(root.rglob("*.nii*")):
        found = _parse_name(path.name)
        if found is None:
            continue
        subject_id, naming, key = found
        group = groups.setdefault(subject_id, {"naming": naming, "files": {}, "folder": path.parent})
        if group["folder"] != path.parent or group["naming"] != naming or key in group["files"]:
            raise ValueError(
                f"subject {subject_id!r} has more than one {key!r} file or spans folders or namings "
                f"({path}); keep one file per modality in one folder per subject"
            )
        group["files"][key] = path
    subjects = []
    for subject_id, group in sorted(groups.items()):
        files = dict(group["files"])
        seg = files.pop("seg", None)
        if not files:
            continue
        row = table.get(subject_id, {})
        subjects.append(
            Subject(
                id=subject_id,
                paths={m: files[m] for m in MODALITIES if m in files},
                seg=seg,
                label_convention=row.get("convention") or NAMINGS[group["naming"]].convention,
                tumor_class=row.get("class") or _class_from_path(subject_id, group["folder"].relative_to(root)),
                naming=group["naming"],
            )
        )
    return subjects


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """``nib.load`` of a ``.nii``/``.nii.gz`` file, typed as the NIfTI image it is (nibabel types it as any image
    file, which has no affine or voxel data)."""
    img = nib.load(path)
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise ValueError(f"{path} is not a NIfTI-1 or NIfTI-2 image (nibabel reads it as {type(img).__name__})")
    return img


def load_subject(subject: Subject, modalities: Sequence[str] = MODALITIES) -> LoadedSubject:
    """``image`` float32 (C, X, Y, Z) in the order of ``modalities``; ``seg`` uint8 in BraTS 2023 labels or None."""
    if not modalities:
        raise ValueError("modalities is empty; name at least one of t1, t1c, t2, flair")
    missing = [m for m in modalities if m not in subject.paths]
    if missing:
        raise ValueError(f"subject {subject.id!r} has no {missing} image; it has {sorted(subject.paths)}")
    images: list[np.ndarray] = []
    affine = None
    for modality in modalities:
        img = load_nifti(subject.paths[modality])
        _check_geometry(subject, modality, img, images[0].shape if images else None, affine)
        affine = img.affine if affine is None else affine
        images.append(img.get_fdata(dtype=np.float32))
    seg = None
    if subject.seg is not None:
        img = load_nifti(subject.seg)
        _check_geometry(subject, "seg", img, images[0].shape if images else None, affine)
        seg = _read_labels(subject, img)
    return {
        "id": subject.id,
        "image": np.stack(images),
        "seg": seg,
        "affine": np.asarray(affine, dtype=np.float64),
        "class": subject.tumor_class,
        "modalities": tuple(modalities),
    }


def normalise(image: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """Z-score each channel over its non-zero voxels (or over ``brain``); everything else is 0.

    BraTS volumes are skull-stripped, so 0 marks the background, and it must stay 0 after normalising.
    """
    image = np.asarray(image, dtype=np.float32)
    channels = image[None] if image.ndim == 3 else image
    if channels.ndim != 4:
        raise ValueError(f"expected an image (X, Y, Z) or (C, X, Y, Z), got shape {image.shape}")
    out = np.zeros_like(channels)
    for c, channel in enumerate(channels):
        inside = channel != 0 if brain is None else np.asarray(brain, dtype=bool)
        values = channel[inside]
        if values.size == 0:
            continue
        std = float(values.std(dtype=np.float64))
        out[c][inside] = (values - float(values.mean(dtype=np.float64))) / (std if std > 0 else 1.0)
    return out[0] if image.ndim == 3 else out


def crop_to_nonzero(
    image: np.ndarray, seg: np.ndarray | None = None, margin: int = 0, affine: np.ndarray | None = None
) -> Crop:
    """Crop (C, X, Y, Z) or (X, Y, Z) to the box of non-zero image or mask voxels, ``margin`` voxels wider.

    The returned affine maps the cropped voxels to the same world points as before: ``affine @ translation(start)``.
    """
    image = np.asarray(image)
    if image.ndim not in (3, 4):
        raise ValueError(f"expected an image (X, Y, Z) or (C, X, Y, Z), got shape {image.shape}")
    if margin < 0:
        raise ValueError(f"margin must be a non-negative voxel count, got {margin}")
    spatial = image.shape[-3:]
    occupied = (image != 0).any(axis=0) if image.ndim == 4 else image != 0
    if seg is not None:
        if np.shape(seg) != spatial:
            raise ValueError(f"seg has shape {np.shape(seg)}, the image's spatial shape is {spatial}")
        occupied = occupied | (np.asarray(seg) != 0)
    if not occupied.any():
        raise ValueError("the image is all zero: there is nothing to crop to")
    x, y, z = (_occupied_span(occupied, axis, margin) for axis in range(3))
    box = (x, y, z)
    cropped_affine = None
    if affine is not None:
        shift = np.eye(4)
        shift[:3, 3] = [s.start for s in box]
        cropped_affine = np.asarray(affine, dtype=np.float64) @ shift
    return Crop(image[..., x, y, z], None if seg is None else np.asarray(seg)[box], box, cropped_affine)


def _occupied_span(occupied: np.ndarray, axis: int, margin: int) -> slice:
    """The indices along ``axis`` where ``occupied`` (3D) holds a voxel, ``margin`` wider, within the array."""
    hit = np.flatnonzero(occupied.any(axis=tuple(a for a in range(3) if a != axis)))
    return slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, occupied.shape[axis]))


def _parse_name(name: str) -> tuple[str, str, str] | None:
    for naming, pattern in _PATTERNS.items():
        match = pattern.match(name)
        if match:
            suffix = match["suffix"].lower()
            key = next(k for k, v in NAMINGS[naming].files.items() if v == suffix)
            return match["id"], naming, key
    return None


def _read_subjects_csv(path: Path) -> dict[str, dict[str, str | None]]:
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    table: dict[str, dict[str, str | None]] = {}
    for row in rows:
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if row.get("subject_id"):
            table[row["subject_id"]] = {
                "class": row.get("class", "").upper() or None,
                "convention": row.get("convention") or None,
            }
    return table


def _class_from_path(subject_id: str, folder: Path) -> str | None:
    for part in (subject_id, *reversed(folder.parts)):
        match = _CLASS_IN_NAME.search(part)
        if match:
            return match[1].upper()
    return None


def _check_geometry(subject: Subject, key: str, img, shape, affine) -> None:
    if len(img.shape) != 3:
        raise ValueError(f"subject {subject.id!r}: the {key} file is {len(img.shape)}D {img.shape}; expected 3D")
    if shape is not None and tuple(img.shape) != tuple(shape):
        raise ValueError(f"subject {subject.id!r}: the {key} file has shape {img.shape}, the first image {shape}")
    if affine is not None and not np.allclose(img.affine, affine, atol=1e-3):
        raise ValueError(f"subject {subject.id!r}: the {key} file's affine differs from the first image's")


def _read_labels(subject: Subject, img) -> np.ndarray:
    data = np.asanyarray(img.dataobj)
    labels = np.rint(data)
    if not np.array_equal(labels, data) or labels.min() < 0 or labels.max() > 4:
        raise ValueError(f"subject {subject.id!r}: the mask must hold integer labels 0-4")
    labels = labels.astype(np.uint8)
    present = set(np.flatnonzero(np.bincount(labels.ravel(), minlength=5)).tolist()) - {0}
    if {3, 4} <= present:
        raise ValueError(f"subject {subject.id!r}: the mask holds labels 3 and 4, mixing BraTS 2023 and 2019")
    # The labels decide where they can; a mask of only 1 and 2 reads the same in both conventions.
    convention = "brats2019" if 4 in present else subject.label_convention or "brats2023"
    return to_brats2023(labels, convention)
