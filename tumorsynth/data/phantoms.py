"""BraTS-format phantom subjects: real template anatomy with a simulated glioma, for training without BraTS.

One subject is made in five steps, all on the brain's bounding box of the template grid:

1. the template anatomy (T1, T2, WM and CSF probabilities, brain mask) is resampled through a random small affine
   (±4°, ±7 % size) and a smooth elastic field (a few mm), so no two subjects share a brain;
2. a tumour centre is drawn in white matter deep enough that the whole lumpy tumour fits in the brain, and the
   anatomy around it is pushed outward (mass effect);
3. nested labels are drawn from noise-perturbed radii: HGG has a necrotic core (1) in an enhancing rim (3) in wide
   oedema (2); LGG has a non-enhancing core (1) in narrower oedema (2), and rarely a tiny enhancing focus (3);
4. the four contrasts: T1 and T2 from the templates; FLAIR is T2 with CSF suppressed through the CSF probability;
   T1C is T1; then each label's tissue is blended in at intensities relative to white matter (1.0), with partial
   volume at the edges and a smooth texture;
5. acquisition: a smooth multiplicative bias field, Rician noise, an arbitrary scanner gain, and 0 outside the brain.

Everything random comes from the ``rng`` passed in, so a subject is a function of its generator's seed.
"""

from __future__ import annotations

import csv
import gzip
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..imaging.templates import BRATS_SHAPE, Templates, load_templates
from .brats import CLASSES, MODALITIES, NAMINGS, file_name

NECROSIS, EDEMA, ENHANCING = 1, 2, 3  # BraTS 2023 labels
# Tissue intensity relative to healthy white matter, per label, in the order of MODALITIES (t1, t1c, t2, flair).
LEVELS = {
    "HGG": {NECROSIS: (0.45, 0.45, 1.85, 1.05), EDEMA: (0.80, 0.80, 1.55, 1.65), ENHANCING: (0.80, 1.70, 1.45, 1.50)},
    "LGG": {NECROSIS: (0.65, 0.65, 1.75, 1.80), EDEMA: (0.85, 0.85, 1.45, 1.55), ENHANCING: (0.80, 1.50, 1.45, 1.50)},
}
WHOLE_RADIUS_MM = {"HGG": (12.0, 35.0), "LGG": (10.0, 30.0)}
CORE_FRACTION = {"HGG": (0.35, 0.65), "LGG": (0.55, 0.85)}  # core radius / whole radius: LGG oedema is narrower
PUSH = {"HGG": (0.15, 0.35), "LGG": (0.05, 0.20)}
LGG_ENHANCING_PROBABILITY = 0.08
BOX_MARGIN_MM = 12.0  # room around the template brain for the random affine and elastic field


@dataclass(frozen=True)
class TumourPlan:
    tumor_class: str
    centre: np.ndarray  # (3,) voxel, in the brain box
    whole_mm: float
    core_mm: float
    necrosis_mm: float  # 0: no necrosis
    lumpiness: float  # relative radius change per unit of the boundary noise
    push: float  # mass effect: how far, as a fraction of its radius, the tissue near the centre moves out
    push_mm: float  # the radius the push reaches
    focus_mm: float  # LGG only: radius of a tiny enhancing focus, 0 for none


def make_subject(
    templates: Templates, rng: np.random.Generator, tumor_class: str, shape: Sequence[int] | None = None
) -> dict:
    """One phantom on the templates' grid.

    Returns float32 ``t1, t1c, t2, flair`` (0 outside the brain), uint8 ``seg`` (BraTS 2023 labels), the ground-truth
    anatomy (bool ``brain``, float32 ``wm``), ``affine``, and the tumour's ``class``, ``centre_voxel``,
    ``centre_mm`` (world) and ``radii_mm`` (whole, core, necrosis). ``shape`` only checks the templates' grid: load
    templates on another grid with ``load_templates(shape)``.
    """
    if tumor_class not in CLASSES:
        raise ValueError(f"tumor_class must be one of {CLASSES}, got {tumor_class!r}")
    if shape is not None and tuple(int(n) for n in shape) != templates.shape:
        raise ValueError(
            f"the templates are on a {templates.shape} grid, not {tuple(shape)}; pass load_templates({tuple(shape)})"
        )
    spacing = templates.spacing.astype(np.float32)
    anatomy, box = _warp_anatomy(templates, rng)
    plan = _plan_tumour(anatomy, spacing, rng, tumor_class)
    local = _tumour_box(plan, spacing, anatomy["brain"].shape)
    _push(anatomy, plan, local, spacing)
    seg_local = _tumour_labels(plan, local, spacing, rng)
    seg_local[~anatomy["brain"][local]] = 0
    images = _healthy_contrasts(anatomy, rng)
    _paint(images, seg_local, local, plan, spacing, rng)
    images = _acquire(images, anatomy["brain"], spacing, rng)

    def full(array: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros(templates.shape, dtype)
        out[box] = array
        return out

    seg = np.zeros(anatomy["brain"].shape, np.uint8)
    seg[local] = seg_local
    start = np.array([s.start for s in box], dtype=np.float64)
    centre = start + plan.centre
    affine = np.asarray(templates.affine, dtype=np.float64)
    return {
        **{name: full(images[name], np.float32) for name in MODALITIES},
        "seg": full(seg, np.uint8),
        "brain": full(anatomy["brain"], bool),
        "wm": full(anatomy["wm"], np.float32),
        "affine": affine,
        "class": tumor_class,
        "centre_voxel": tuple(float(c) for c in centre),
        "centre_mm": tuple(float(c) for c in affine[:3, :3] @ centre + affine[:3, 3]),
        "radii_mm": {"whole": plan.whole_mm, "core": plan.core_mm, "necrosis": plan.necrosis_mm},
    }


def generate_phantoms(
    out_dir: str | Path,
    n: int,
    seed: int,
    convention: str = "brats2023",
    classes: Sequence[str] = CLASSES,
    hgg_fraction: float = 0.5,
    shape: Sequence[int] = BRATS_SHAPE,
    naming: str | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write ``n`` subjects as a BraTS folder and ``subjects.csv`` (subject_id, class, convention); return the folders.

    Subject ``i`` draws everything from ``np.random.default_rng([seed, i])``, so any subset can be remade alone.
    ``naming`` (file names) defaults to ``convention`` (labels); ``shape`` sets the grid over the BraTS 240×240×155 mm
    field of view (1 mm for 240×240×155).
    """
    naming = naming or convention
    for name, value in (("convention", convention), ("naming", naming)):
        if value not in NAMINGS:
            raise ValueError(f"{name} must be one of {sorted(NAMINGS)}, got {value!r}")
    unknown = set(classes) - set(CLASSES)
    if not classes or unknown:
        raise ValueError(f"classes must be a non-empty subset of {CLASSES}, got {tuple(classes)}")
    if n < 0 or seed < 0 or not 0 <= hgg_fraction <= 1:
        raise ValueError(f"need n >= 0, seed >= 0 and 0 <= hgg_fraction <= 1; got {n}, {seed}, {hgg_fraction}")
    templates = load_templates(tuple(int(s) for s in shape), cache_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, hgg_fraction, tuple(classes), convention, naming, out_dir) for i in range(n)]
    results = []
    if workers > 1 and n > 1:
        # fork: the children share the templates already loaded here
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for done, r in enumerate(pool.map(_make_and_write, [templates] * n, jobs), 1):
                results.append(r)
                if progress:
                    progress(done, n)
    else:
        for done, job in enumerate(jobs, 1):
            results.append(_make_and_write(templates, job))
            if progress:
                progress(done, n)
    folders = [r[0] for r in results]
    rows = [r[1] for r in results]
    with (out_dir / "subjects.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject_id", "class", "convention"])
        writer.writeheader()
        writer.writerows(rows)
    return folders


def _make_and_write(templates: Templates, job: tuple) -> tuple[Path, dict]:
    i, seed, hgg_fraction, classes, convention, naming, out_dir = job
    rng = np.random.default_rng([seed, i])
    # Always one draw, so subject i is the same subject whatever ``classes`` allows.
    drawn = "HGG" if rng.random() < hgg_fraction else "LGG"
    tumor_class = drawn if drawn in classes else classes[0]
    subject_id = f"Phantom_{tumor_class}_{i + 1:04d}"
    subject = make_subject(templates, rng, tumor_class)
    folder = write_subject(out_dir / subject_id, subject_id, subject, convention, naming)
    return folder, {"subject_id": subject_id, "class": tumor_class, "convention": convention}


def write_subject(folder: Path, subject_id: str, subject: dict, convention: str, naming: str) -> Path:
    """The four images (float32) and the mask (uint8, in ``convention``'s labels) as gzipped NIfTI files."""
    folder.mkdir(parents=True, exist_ok=True)
    for modality in MODALITIES:
        _write_nifti(folder / file_name(subject_id, modality, naming), subject[modality], subject["affine"])
    seg = subject["seg"]
    if convention == "brats2019":
        seg = np.where(seg == ENHANCING, 4, seg).astype(np.uint8)
    _write_nifti(folder / file_name(subject_id, "seg", naming), seg, subject["affine"])
    return folder


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """gzip level 1 and a zero mtime: fast, and the same subject gives the same bytes."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with path.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(img.to_bytes())


def _warp_anatomy(templates: Templates, rng: np.random.Generator) -> tuple[dict, tuple[slice, ...]]:
    spacing = templates.spacing
    box = _bounding_box(templates.brain_mask, np.ceil(BOX_MARGIN_MM / spacing).astype(int))
    coords = _warp_coordinates(templates, box, rng)  # (3, *box) template voxel of each box voxel
    # Nearest neighbour: the mask's own edge, at an eighth of the cost of thresholding a linear interpolation.
    brain = ndimage.map_coordinates(templates.brain_mask.view(np.uint8), coords, order=0, output=np.uint8) > 0
    inside = coords[:, brain]  # only brain voxels are ever seen: the rest is set to 0
    warped = {"brain": brain}
    for name in ("t1", "t2", "wm", "csf"):
        warped[name] = np.zeros(brain.shape, np.float32)
        warped[name][brain] = ndimage.map_coordinates(getattr(templates, name), inside, order=1, output=np.float32)
    return warped, box


def _warp_coordinates(templates: Templates, box: tuple[slice, ...], rng: np.random.Generator) -> np.ndarray:
    """The random affine about the brain centre, computed axis by axis, plus a smooth elastic displacement."""
    spacing = templates.spacing
    start = np.array([s.start for s in box], dtype=np.float64)
    size = tuple(s.stop - s.start for s in box)
    affine = np.asarray(templates.affine, dtype=np.float64)
    centre = np.eye(4)
    centre[:3, 3] = affine[:3, :3] @ (start + (np.asarray(size) - 1) / 2) + affine[:3, 3]
    linear = np.eye(4)
    linear[:3, :3] = _random_linear(rng)
    voxel_map = np.linalg.inv(affine) @ centre @ linear @ np.linalg.inv(centre) @ affine
    axes = [(start[k] + np.arange(size[k])).reshape([-1 if a == k else 1 for a in range(3)]) for k in range(3)]
    amplitude_mm = rng.uniform(1.5, 3.0)
    coords = np.empty((3, *size), np.float32)
    for k in range(3):
        elastic = _smooth_field(rng, size, 24.0 / spacing) * np.float32(amplitude_mm / spacing[k])
        coords[k] = sum(np.float32(voxel_map[k, j]) * axes[j].astype(np.float32) for j in range(3))
        coords[k] += np.float32(voxel_map[k, 3]) + elastic
    return coords


def _random_linear(rng: np.random.Generator) -> np.ndarray:
    """A small rotation times a size change: maps the subject's world around the brain centre into the template's."""
    angles = np.deg2rad(rng.uniform(-4, 4, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i] = turn[j, j] = np.cos(angle)
        turn[i, j], turn[j, i] = -np.sin(angle), np.sin(angle)
        rotation = rotation @ turn
    scale = rng.uniform(0.93, 1.07) * rng.uniform(0.97, 1.03, 3)
    return rotation @ np.diag(1 / scale)


def _plan_tumour(anatomy: dict, spacing: np.ndarray, rng: np.random.Generator, tumor_class: str) -> TumourPlan:
    step = max(1, round(3.0 / float(spacing.min())))  # a ~3 mm grid is fine enough to place a centre
    coarse = (slice(None, None, step),) * 3
    depth = ndimage.distance_transform_edt(anatomy["brain"][coarse], sampling=spacing * step)
    white = anatomy["wm"][coarse] > 0.5
    lumpiness = rng.uniform(0.06, 0.15)
    whole = rng.uniform(*WHOLE_RADIUS_MM[tumor_class])
    slack = float(step * spacing.max())  # the coarse grid's error on the depth
    candidates = np.empty((0, 3), int)
    for _ in range(20):
        # Deep enough for a one-sigma lump; the rarer bigger lumps that reach the surface are cut by the brain mask.
        candidates = np.argwhere((depth >= whole * (1 + lumpiness) + slack) & white)
        if len(candidates):
            break
        whole *= 0.9
    if not len(candidates):
        candidates = np.argwhere(depth >= depth.max())
        whole = max(float(depth.max()) - slack, 2 * float(spacing.max())) / (1 + lumpiness)
    centre = candidates[rng.integers(len(candidates))] * step + rng.uniform(0, step - 1, 3)
    core = max(whole * rng.uniform(*CORE_FRACTION[tumor_class]), 2 * float(spacing.max()))
    rim = max(rng.uniform(2.5, 6.0), 1.6 * float(spacing.max()))
    necrosis = max(core - rim, 0.0) if tumor_class == "HGG" else 0.0
    focus = 0.0
    if tumor_class == "LGG" and rng.random() < LGG_ENHANCING_PROBABILITY:
        focus = rng.uniform(1.5, 3.0)
    return TumourPlan(
        tumor_class=tumor_class,
        centre=centre.astype(np.float64),
        whole_mm=float(whole),
        core_mm=float(core),
        necrosis_mm=float(necrosis),
        lumpiness=float(lumpiness),
        push=float(rng.uniform(*PUSH[tumor_class])),
        push_mm=float(core * rng.uniform(1.6, 2.4)),
        focus_mm=float(focus),
    )


def _tumour_box(plan: TumourPlan, spacing: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    reach_mm = max(plan.whole_mm * (1 + 2 * plan.lumpiness) + 8.0, plan.push_mm)
    reach = np.ceil(reach_mm / spacing).astype(int)
    centre = np.round(plan.centre).astype(int)
    return tuple(slice(max(c - r, 0), min(c + r + 1, n)) for c, r, n in zip(centre, reach, shape))


def _offsets_mm(plan: TumourPlan, box: tuple[slice, ...], spacing: np.ndarray) -> list[np.ndarray]:
    """Per axis, the mm offset of each box voxel from the tumour centre, shaped to broadcast over the box."""
    out = []
    for k, s in enumerate(box):
        offset = ((np.arange(s.start, s.stop) - plan.centre[k]) * spacing[k]).astype(np.float32)
        out.append(offset.reshape([-1 if a == k else 1 for a in range(3)]))
    return out


def _push(anatomy: dict, plan: TumourPlan, box: tuple[slice, ...], spacing: np.ndarray) -> None:
    """Mass effect: each voxel near the centre shows tissue from nearer the centre.

    A voxel at radius r shows the tissue at r * (1 - push * (1 - r²/R²)²) for r < R = push_mm, and its own beyond:
    a map that grows with r (its slope is at least 1 - push), so tissue is moved, never folded.
    """
    offsets = _offsets_mm(plan, box, spacing)
    inside: np.ndarray = np.clip(1 - sum(o**2 for o in offsets) / np.float32(plan.push_mm**2), 0, None)
    keep = 1 - np.float32(plan.push) * inside**2
    coords = np.stack(
        [np.broadcast_to(plan.centre[k] + offsets[k] / spacing[k] * keep, keep.shape) for k in range(3)]
    ).astype(np.float32)
    for name in ("t1", "t2", "wm", "csf"):
        anatomy[name][box] = ndimage.map_coordinates(anatomy[name], coords, order=1, output=np.float32)
    anatomy["brain"][box] = ndimage.map_coordinates(anatomy["brain"].view(np.uint8), coords, order=0) > 0


def _tumour_labels(
    plan: TumourPlan, box: tuple[slice, ...], spacing: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    offsets = _offsets_mm(plan, box, spacing)
    r = np.sqrt(sum(o**2 for o in offsets))
    shape = r.shape
    cell = max(plan.whole_mm / 2, 4.0) / spacing
    outer, inner, own = (np.clip(_smooth_field(rng, shape, cell), -2, 2) for _ in range(3))
    whole = r < plan.whole_mm * (1 + plan.lumpiness * outer)
    core = whole & (r < plan.core_mm * (1 + plan.lumpiness * inner))
    seg = np.where(whole, EDEMA, 0).astype(np.uint8)
    if plan.tumor_class == "HGG":
        seg[core] = ENHANCING
        seg[core & (r < plan.necrosis_mm * (1 + plan.lumpiness * (inner + 0.5 * own)))] = NECROSIS
        return seg
    seg[core] = NECROSIS
    if plan.focus_mm > 0:
        direction = rng.normal(size=3)
        spot = direction / np.linalg.norm(direction) * rng.uniform(0, 0.5 * plan.core_mm)
        focus = sum((o - s) ** 2 for o, s in zip(offsets, spot)) < plan.focus_mm**2
        seg[core & focus] = ENHANCING
    return seg


def _healthy_contrasts(anatomy: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    suppression = np.float32(rng.uniform(0.85, 0.95))
    return {
        "t1": anatomy["t1"],
        "t1c": anatomy["t1"].copy(),
        "t2": anatomy["t2"],
        "flair": anatomy["t2"] * (1 - suppression * anatomy["csf"]),
    }


def _paint(
    images: dict,
    seg: np.ndarray,
    box: tuple[slice, ...],
    plan: TumourPlan,
    spacing: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Blend each label's tissue over the healthy image; oedema keeps some of the anatomy under it."""
    edge = rng.uniform(1.0, 2.5) / spacing  # oedema fades out over a few mm
    sharp = 0.7 / spacing
    whole = _blur(seg > 0, edge)
    weights = {label: _blur(seg == label, sharp) for label in (NECROSIS, ENHANCING)}
    weights[EDEMA] = np.clip(whole - weights[NECROSIS] - weights[ENHANCING], 0, 1) * np.float32(rng.uniform(0.7, 0.95))
    healthy = 1 - sum(weights.values())
    texture = 1 + np.float32(rng.uniform(0.04, 0.1)) * _smooth_field(rng, seg.shape, 5.0 / spacing)
    levels = {
        label: np.asarray(values) * rng.uniform(0.92, 1.08, 4) for label, values in LEVELS[plan.tumor_class].items()
    }
    for m, name in enumerate(MODALITIES):
        tumour = sum(weights[label] * np.float32(levels[label][m]) for label in weights)
        images[name][box] = images[name][box] * healthy + tumour * texture


def _acquire(images: dict, brain: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> dict:
    out = {}
    for name in MODALITIES:
        bias = np.exp(np.float32(rng.uniform(0.04, 0.15)) * _smooth_field(rng, brain.shape, 60.0 / spacing))
        signal = images[name][brain] * bias[brain]
        sigma = np.float32(rng.uniform(0.015, 0.04))
        real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        out[name] = np.zeros(brain.shape, np.float32)
        out[name][brain] = np.sqrt(real**2 + imaginary**2) * np.float32(rng.uniform(200, 1500))
    return out


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cell: np.ndarray | float) -> np.ndarray:
    """Smooth Gaussian noise of unit variance: random Gaussian bumps every ``cell`` voxels per axis.

    The sum is separable, one small matrix product per axis, so a brain-sized field costs tens of milliseconds.
    """
    weights = []
    for n, c in zip(shape, np.broadcast_to(cell, (len(shape),))):
        c = max(float(c), 1.0)
        centres = np.arange(-c, n + c, c)  # a bump beyond each end keeps the variance even at the edges
        w = np.exp(-(((np.arange(n)[:, None] - centres[None]) / c) ** 2))
        weights.append((w / np.sqrt((w**2).sum(1, keepdims=True))).astype(np.float32))  # unit variance per voxel
    field = rng.standard_normal(tuple(w.shape[1] for w in weights)).astype(np.float32)
    for axis, w in enumerate(weights[:-1]):
        field = np.moveaxis(np.tensordot(w, field, axes=(1, axis)), 0, axis)
    return np.ascontiguousarray(field) @ weights[-1].T


def _blur(mask: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma, mode="nearest")


def _bounding_box(mask: np.ndarray, margin: np.ndarray) -> tuple[slice, ...]:
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(
            slice(max(int(hit[0]) - int(margin[axis]), 0), min(int(hit[-1]) + 1 + int(margin[axis]), mask.shape[axis]))
        )
    return tuple(box)
