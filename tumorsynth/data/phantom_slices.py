"""A labelled meningioma / glioma / pituitary slice set built from phantom (or BraTS-format) volumes, for demos.

Phantoms (and BraTS) hold gliomas only, so two of the three classes are **simulated** here, and the set says so in
``SLICES.json`` (which the trainer copies into the model card):

- **glioma**: axial T1C slices through the volume's own tumour (the phantoms' simulated LGG/HGG: both are gliomas);
- **meningioma**: a tumour-free axial T1C slice of the same volumes with a painted extra-axial mass: a
  homogeneously enhancing, broad-based hemisphere sitting on the brain's outer edge, with a short bright dural tail;
- **pituitary**: a tumour-free axial T1C slice from the lower part of the brain with a painted small, round, midline,
  moderately and slightly unevenly enhancing mass in the anterior-central (sellar) region.

The painted shapes follow textbook appearance only; nothing here was fitted to patients' images. The slices are
written as 8-bit PNGs, ``OUT/<class>/<subject>_z<level>.png``, after ``slices.prepare`` at the volume's size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .brats import find_subjects, load_subject
from .slices import prepare, tumour_levels

SIMULATED_NOTE = "SLICES.json"  # how each class was made; the StyleGAN2 trainer copies it into the model card

HOW = {
    "meningioma": "SIMULATED: a homogeneously enhancing extra-axial hemisphere (radius 8-20 mm) painted on the outer "
    "edge of a tumour-free phantom T1C slice, with a short dural tail",
    "glioma": "the phantom's own simulated glioma (LGG or HGG from `tumorsynth phantoms`), axial T1C slices through "
    "the tumour",
    "pituitary": "SIMULATED: a small round midline mass (radius 5-11 mm), moderately enhancing, painted in the "
    "anterior-central (sellar) region of a low, tumour-free phantom T1C slice",
}


def _reference(image: np.ndarray) -> float:
    """A white-matter-like level: the 75th percentile of the slice's brain."""
    brain = image[image > 0]
    return float(np.percentile(brain, 75)) if brain.size else 1.0


def _disc(shape, centre, radius: float, soft: float = 1.5) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(yy - centre[0], xx - centre[1])
    return np.clip((radius - d) / soft + 0.5, 0, 1)


def paint_meningioma(image: np.ndarray, rng: np.random.Generator, mm: float = 1.0) -> np.ndarray:
    brain = image > 0
    edge = brain & ~ndimage.binary_erosion(brain, iterations=2)
    points = np.argwhere(edge)
    centre = points[rng.integers(len(points))]
    radius = rng.uniform(8, 20) / mm
    mass = _disc(image.shape, centre, radius) * ndimage.binary_dilation(brain, iterations=int(radius * 0.6))
    level = _reference(image) * rng.uniform(1.5, 1.8)
    tail = _disc(image.shape, centre, radius * 1.8, soft=1.0) * (edge | ndimage.binary_dilation(edge)) * 0.6
    weight = np.maximum(mass, tail)
    out = image * (1 - weight) + level * weight * (1 + 0.03 * rng.standard_normal(image.shape))
    return out.astype(np.float32)


def paint_pituitary(image: np.ndarray, rng: np.random.Generator, mm: float = 1.0) -> np.ndarray:
    rows, cols = np.nonzero(image > 0)
    # the first voxel axis runs left-right in BraTS/RAS volumes: the midline is the brain's centre along it
    centre = (
        rows.min() + (rows.max() - rows.min()) * rng.uniform(0.47, 0.53),
        cols.min() + (cols.max() - cols.min()) * rng.uniform(0.64, 0.72),
    )  # anterior to the brainstem
    radius = rng.uniform(5, 11) / mm
    weight = _disc(image.shape, centre, radius)
    texture = ndimage.gaussian_filter(rng.standard_normal(image.shape), 2.0) * 4
    level = _reference(image) * rng.uniform(1.25, 1.5) * (1 + 0.08 * texture)
    return (image * (1 - weight) + level * weight).astype(np.float32)


def _free_levels(image: np.ndarray, seg: np.ndarray | None) -> np.ndarray:
    """Axial levels with a large brain section and no tumour."""
    area = (image != 0).sum(axis=(0, 1))
    free = area >= 0.5 * area.max()
    if seg is not None:
        free &= ~(seg > 0).any(axis=(0, 1))
    return np.nonzero(free)[0]


def build_slice_set(
    data_dir: str | Path, out_dir: str | Path, per_class: int = 200, seed: int = 0, modality: str = "t1c"
) -> dict[str, int]:
    """Write ``OUT/<class>/*.png`` and ``OUT/SLICES.json``; return the number of slices per class."""
    out_dir = Path(out_dir)
    subjects = find_subjects(data_dir)
    if not subjects:
        raise ValueError(f"no BraTS-format subjects in {data_dir}")
    per_subject = -(-per_class // len(subjects))
    counts = dict.fromkeys(HOW, 0)
    for c in HOW:
        (out_dir / c).mkdir(parents=True, exist_ok=True)
    for i, subject in enumerate(subjects):
        rng = np.random.default_rng([seed, i])
        data = load_subject(subject, (modality,))
        image, seg = data["image"][0], data["seg"]
        mm = float(np.linalg.norm(data["affine"][:3, 0]))
        free = _free_levels(image, seg)
        low = free[free <= np.percentile(free, 40)] if len(free) else free
        made = {"glioma": [(z, image[:, :, z]) for z in tumour_levels(image, seg, per_subject)]}
        made["meningioma"] = [
            (z, paint_meningioma(image[:, :, z], rng, mm))
            for z in rng.choice(free, min(per_subject, len(free)), replace=False)
        ]
        made["pituitary"] = [
            (z, paint_pituitary(image[:, :, z], rng, mm))
            for z in rng.choice(low, min(per_subject, len(low)), replace=False)
        ]
        for c, slices in made.items():
            for z, s in slices:
                if counts[c] < per_class:
                    pixels = (prepare(s, max(s.shape)) * 255).round().astype(np.uint8)
                    Image.fromarray(np.rot90(pixels)).save(out_dir / c / f"{subject.id}_z{int(z):03d}.png")
                    counts[c] += 1
    note = {
        "summary": "glioma slices are phantom tumours; meningioma and pituitary masses are painted onto "
        "tumour-free phantom slices",
        "source": str(data_dir),
        "modality": modality,
        "classes": HOW,
        "counts": counts,
    }
    (out_dir / SIMULATED_NOTE).write_text(json.dumps(note, indent=2) + "\n")
    return counts
