"""Tumour-mask label conventions: detect, validate, convert.

BraTS 2019: 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour.
BraTS 2023: 1 necrotic core, 2 oedema, 3 enhancing tumour.
Binary: 1 whole tumour.
Regions used for conditioning (nested, as in the BraTS evaluation): WT = all tumour labels, TC = core + enhancing,
ET = enhancing. A mask holding only {1, 2} means the same in both BraTS conventions; it is reported as brats2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidUpload

CONVENTIONS = {
    "binary": {0, 1},
    "brats2019": {0, 1, 2, 4},
    "brats2023": {0, 1, 2, 3},
}
ENHANCING = {"brats2019": 4, "brats2023": 3}
REGIONS = ("WT", "TC", "ET")


@dataclass(frozen=True)
class MaskInfo:
    convention: str
    labels: list[int]  # the non-zero labels present
    tumour_voxels: int


def _labels_of(data: np.ndarray, field: str) -> tuple[np.ndarray, np.ndarray]:
    fractional = data.dtype.kind == "f" and not np.array_equal(data, np.round(data))
    lo, hi = float(data.min()), float(data.max())
    check_label_values(fractional, lo, hi, field)
    return label_counts(data, int(hi))


def check_label_values(fractional: bool, lo: float, hi: float, field: str) -> None:
    """Labels are whole numbers within 0…255 (checked here on an array, and chunk by chunk by the NIfTI reader)."""
    if fractional:
        raise InvalidUpload.for_field(
            field,
            "the mask holds non-integer values; a mask holds integer labels "
            "(BraTS 2019 {0,1,2,4}, BraTS 2023 {0,1,2,3} or binary {0,1})",
        )
    if lo < 0 or hi > 255:
        raise InvalidUpload.for_field(
            field,
            f"the mask holds labels from {lo:g} to {hi:g}; allowed are BraTS 2019 "
            "{0,1,2,4}, BraTS 2023 {0,1,2,3} or binary {0,1}",
        )


SMALL_LABEL_MAX = 15  # up to this label, count by comparison; beyond, one bincount


def label_counts(data: np.ndarray, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels present, count per label 0…max(hi, 5)) of integer-valued ``data`` within 0…255.

    Counted on the data as stored, in its memory order: NIfTI arrays are Fortran-ordered, so a C-order ``ravel`` copies
    them, and ``bincount`` converts to int64 (8 bytes a voxel). A mask's few labels are counted by comparison instead
    (one byte-wide pass each); only a mask with labels above ``SMALL_LABEL_MAX`` (already refused by the conventions,
    but its message names them) pays for a bincount.
    """
    flat = data.ravel(order="K")
    if hi > SMALL_LABEL_MAX:
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=6)
        return np.flatnonzero(counts), counts
    counts = np.zeros(max(hi, 5) + 1, np.int64)
    rest = flat.size
    for label in range(1, hi + 1):
        counts[label] = np.count_nonzero(flat == label)
        rest -= counts[label]
    counts[0] = rest
    return np.flatnonzero(counts), counts


def detect_convention(present: set[int]) -> str | None:
    if present <= CONVENTIONS["binary"]:
        return "binary"
    if present <= CONVENTIONS["brats2023"]:
        return "brats2023"
    if present <= CONVENTIONS["brats2019"]:
        return "brats2019"
    return None


def validate_mask(vol, field: str = "mask") -> MaskInfo:
    """Labels must follow one convention and the mask must hold tumour; the refusal says what to change."""
    data = np.asarray(vol.data if hasattr(vol, "data") else vol)
    present, counts = _labels_of(data, field)
    present_set = {int(v) for v in present}
    convention = detect_convention(present_set)
    if convention is None:
        extra = sorted(present_set - CONVENTIONS["brats2019"] - CONVENTIONS["brats2023"])
        detail = (
            f"labels {extra} are not tumour labels"
            if extra
            else "labels 3 and 4 together mix BraTS 2023 and BraTS 2019"
        )
        if present_set == {0, 255}:
            detail = "a 0/255 mask; binary masks use 0/1"
        raise InvalidUpload.for_field(
            field, f"{detail}; use BraTS 2019 {{0,1,2,4}}, BraTS 2023 {{0,1,2,3}} or binary {{0,1}} labels"
        )
    tumour = int(counts[1:].sum())
    if tumour == 0:
        raise InvalidUpload.for_field(field, "the mask is empty (no tumour voxels); upload a mask with a tumour")
    return MaskInfo(convention=convention, labels=sorted(present_set - {0}), tumour_voxels=tumour)


def to_brats2023(data: np.ndarray, convention: str) -> np.ndarray:
    """BraTS 2019 → 2023 (4 → 3). Binary and BraTS 2023 masks are returned unchanged."""
    data = np.asarray(data)
    if convention == "brats2019":
        return np.where(data == 4, 3, data).astype(np.uint8)
    return data.astype(np.uint8)


def to_regions(data: np.ndarray, convention: str | None = None) -> np.ndarray:
    """(3, *shape) float32 nested regions WT, TC, ET.

    WT = any label > 0; TC = {1, 3, 4}; ET = {3, 4}: label 4 occurs only in BraTS 2019 masks and 3 only in BraTS 2023
    ones, so one rule serves both. A binary mask says nothing about the core: WT only (TC and ET zero). With no
    ``convention`` a mask whose tumour labels are all 1 is taken as binary.
    """
    labels = np.rint(np.asarray(data)).astype(np.int16)
    wt = labels > 0
    out = np.zeros((3, *labels.shape), np.float32)
    out[0] = wt
    binary = convention == "binary" if convention else bool(np.all(labels[wt] == 1))
    if not binary:
        out[1] = np.isin(labels, (1, 3, 4))
        out[2] = np.isin(labels, (3, 4))
    return out
