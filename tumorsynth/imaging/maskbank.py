"""The mask bank: new, plausible tumour masks made from real ones, for balanced augmentation batches.

A source mask (BraTS 2023 labels) is turned into a new one in four steps, on the tumour's own crop:

1. a random similarity transform about the tumour's centroid: a rotation of up to ``MAX_ANGLE_DEG`` about each axis
   and an isotropic scaling in ``SCALE_RANGE`` (narrowed so that the volume can land in the class's range);
2. a smooth elastic displacement: random vectors every ``ELASTIC_CELL_MM``, interpolated cubically, a few mm long;
3. the nested regions WT ⊇ TC ⊇ ET are resampled as float maps with linear interpolation and thresholded at 0.5.
   Linear interpolation has non-negative weights, so the interpolated maps keep their order and the thresholded
   regions stay nested; the labels are then rebuilt losslessly (ET → 3, TC∖ET → 1, WT∖TC → 2);
4. placement at a random offset, drawn uniformly from those that put every tumour voxel inside the brain.

Checks (a failed one means another try, up to ``max_tries``, then ``ValueError``):

- size: the whole-tumour volume lies in the class's ``MaskStats`` range;
- enclosed core: nesting of the BraTS regions holds by construction, so the check that can fail is whether the core
  (labels 1 and 3) still sits inside oedema. Its *exposure* is the fraction of the core's surface voxels (core voxels
  with a 6-neighbour outside the core) that touch background. A source whose core is enclosed (exposure 0) must give
  an enclosed core; a source whose core already reaches the background may expose at most ``EXPOSURE_SLACK`` more;
- inside the brain: guaranteed by the placement, and verified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from .templates import BRATS_FOV_MM, BRATS_SHAPE, load_templates

NECROSIS, EDEMA, ENHANCING = 1, 2, 3  # BraTS 2023 labels
MAX_ANGLE_DEG = 30.0
SCALE_RANGE = (0.8, 1.25)
ELASTIC_CELL_MM = 16.0
ELASTIC_MM = (1.5, 3.5)  # standard deviation of the displacement per axis
EXPOSURE_SLACK = 0.05
PLACEMENT_STEP_MM = 2.0  # placement is searched on a grid this coarse (conservatively), then checked voxel by voxel
DEFAULT_MARGIN = 0.25


@dataclass(frozen=True)
class MaskStats:
    """The range of whole-tumour volumes (ml) a class's masks may have."""

    min_ml: float
    max_ml: float

    def __post_init__(self):
        if not 0 <= self.min_ml <= self.max_ml:
            raise ValueError(f"need 0 <= min_ml <= max_ml, got {self.min_ml} and {self.max_ml}")

    @classmethod
    def from_masks(
        cls, masks: Sequence[np.ndarray], spacing: Sequence[float] | np.ndarray, margin: float = 0.0
    ) -> MaskStats:
        """The observed range of ``masks``, widened by ``margin`` on a ratio scale: [min / (1 + m), max · (1 + m)]."""
        if not masks:
            raise ValueError("need at least one mask to compute the volume range")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        volumes = [whole_tumour_ml(m, spacing) for m in masks]
        return cls(min(volumes) / (1 + margin), max(volumes) * (1 + margin))

    def allows(self, volume_ml: float) -> bool:
        return self.min_ml <= volume_ml <= self.max_ml


def stats_per_class(
    masks: Sequence[np.ndarray], classes: Sequence[str], spacing: Sequence[float], margin: float = 0.0
) -> dict[str, MaskStats]:
    """``MaskStats`` of each class's masks; ``classes[i]`` is the class of ``masks[i]``."""
    if len(masks) != len(classes):
        raise ValueError(f"got {len(masks)} masks but {len(classes)} classes")
    by_class: dict[str, list[np.ndarray]] = {}
    for mask, tumour_class in zip(masks, classes):
        by_class.setdefault(tumour_class, []).append(mask)
    return {c: MaskStats.from_masks(ms, spacing, margin) for c, ms in by_class.items()}


def whole_tumour_ml(labels: np.ndarray, spacing: Sequence[float] | np.ndarray) -> float:
    return float(np.count_nonzero(labels)) * float(np.prod(spacing)) / 1000.0


def core_exposure(labels: np.ndarray) -> float:
    """Fraction of the core's surface voxels that touch background (6-connectivity); 0 without a core."""
    labels = np.pad(np.asarray(labels), 1)
    core = (labels == NECROSIS) | (labels == ENHANCING)
    if not core.any():
        return 0.0
    cross = ndimage.generate_binary_structure(3, 1)
    surface = core & ~ndimage.binary_erosion(core, cross)
    exposed = surface & ndimage.binary_dilation(labels == 0, cross)
    return float(exposed.sum()) / float(surface.sum())


def augment_mask(
    labels: np.ndarray,
    brain: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    stats: MaskStats | None = None,
    max_tries: int = 20,
) -> np.ndarray:
    """A new plausible mask (uint8, BraTS 2023 labels, on ``brain``'s grid) made from ``labels``; see the module."""
    labels, brain, sp = _check_inputs(labels, brain, spacing)
    source = _Source.of(labels, sp)
    scales = _scale_range(source.volume_ml, stats)
    allowed_exposure = 0.0 if source.exposure == 0 else source.exposure + EXPOSURE_SLACK
    failures: dict[str, int] = {}
    for _ in range(max_tries):
        crop = _deform(source, sp, rng, scales)
        volume = whole_tumour_ml(crop, sp)
        if not crop.any() or (stats is not None and not stats.allows(volume)):
            failures["size outside the class's range"] = failures.get("size outside the class's range", 0) + 1
            continue
        if core_exposure(crop) > allowed_exposure:
            failures["core reaches the background"] = failures.get("core reaches the background", 0) + 1
            continue
        placed = _place(crop, brain, sp, rng)
        if placed is None:
            failures["does not fit inside the brain"] = failures.get("does not fit inside the brain", 0) + 1
            continue
        return placed
    reasons = ", ".join(f"{why} ({n}×)" for why, n in failures.items())
    raise ValueError(
        f"no plausible mask in {max_tries} tries from a {source.volume_ml:.1f} ml tumour: {reasons}. "
        "Give a larger brain, a wider volume range (MaskStats) or more tries"
    )


def generate_bank_masks(
    sources: Sequence[np.ndarray],
    brain: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    n: int,
    seed: int,
    stats: MaskStats | None = None,
    max_tries: int = 20,
) -> list[np.ndarray]:
    """``n`` masks: mask ``i`` augments ``sources[i % len(sources)]`` with ``np.random.default_rng([seed, i])``.

    Without ``stats`` the volume range is the sources' own, widened by ``DEFAULT_MARGIN`` (a single source would
    otherwise allow only its own volume).
    """
    if not sources:
        raise ValueError("need at least one source mask")
    if n < 0 or seed < 0:
        raise ValueError(f"need n >= 0 and seed >= 0, got {n} and {seed}")
    stats = stats or MaskStats.from_masks(sources, spacing, DEFAULT_MARGIN)
    return [
        augment_mask(sources[i % len(sources)], brain, spacing, np.random.default_rng([seed, i]), stats, max_tries)
        for i in range(n)
    ]


def brain_template(shape: Sequence[int], affine: np.ndarray, align: str = "centre", cache_dir=None) -> np.ndarray:
    """The ICBM152 2009c brain mask (bool) on a grid of ``shape`` voxels with ``affine`` (voxel → world mm).

    ``align="centre"`` puts the template brain's centre at the grid's centre (what suits BraTS files and the model
    grids, whose world coordinates are not MNI ones); ``"world"`` takes the grid's world coordinates as MNI
    coordinates. The axis directions come from ``affine`` either way. The template is read on a grid about as fine as
    the target (at least 1 mm), so a coarse target is not aliased.
    """
    shape = tuple(int(n) for n in shape)
    affine = np.asarray(affine, dtype=np.float64)
    if len(shape) != 3 or any(n < 1 for n in shape) or affine.shape != (4, 4):
        raise ValueError(f"need a 3D shape and a 4×4 affine, got {shape} and {affine.shape}")
    if align not in ("centre", "world"):
        raise ValueError(f"align must be 'centre' or 'world', got {align!r}")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero-length voxel axis (spacing {spacing.tolist()})")
    step = max(float(spacing.min()), 1.0)
    template_shape = tuple(max(8, round(f / step)) for f in BRATS_FOV_MM) if step > 1 else BRATS_SHAPE
    templates = load_templates(template_shape, cache_dir)
    t_affine = np.asarray(templates.affine, dtype=np.float64)
    shift = np.eye(4)
    if align == "centre":
        shift[:3, 3] = _grid_centre_mm(t_affine, templates.shape) - _grid_centre_mm(affine, shape)
    voxel_map = np.linalg.inv(t_affine) @ shift @ affine
    resampled = ndimage.affine_transform(
        templates.brain_mask.astype(np.float32),
        voxel_map[:3, :3],
        voxel_map[:3, 3],
        output_shape=shape,
        order=1,
        mode="constant",
        cval=0.0,
    )
    return resampled > 0.5


def _grid_centre_mm(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return affine[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1) / 2) + affine[:3, 3]


@dataclass(frozen=True)
class _Source:
    regions: np.ndarray  # (3, *crop) float32 WT, TC, ET, with a one-voxel border of background
    centroid: np.ndarray  # (3,) voxel in the crop
    radius_mm: float  # the farthest tumour voxel from the centroid
    volume_ml: float
    exposure: float

    @classmethod
    def of(cls, labels: np.ndarray, spacing: np.ndarray) -> _Source:
        hits = np.argwhere(labels > 0)
        lo, hi = hits.min(0), hits.max(0) + 1
        crop = np.pad(labels[tuple(slice(a, b) for a, b in zip(lo, hi))], 1)
        regions = np.stack([crop > 0, (crop == NECROSIS) | (crop == ENHANCING), crop == ENHANCING]).astype(np.float32)
        centroid = (hits - lo + 1).mean(0)
        radius = float(np.sqrt((((hits - lo + 1 - centroid) * spacing) ** 2).sum(1)).max()) + float(spacing.max())
        return cls(regions, centroid, radius, whole_tumour_ml(labels, spacing), core_exposure(crop))


def _check_inputs(labels, brain, spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels, brain = np.asarray(labels), np.asarray(brain, dtype=bool)
    spacing = np.asarray(spacing, dtype=np.float64)
    if labels.ndim != 3 or labels.shape != brain.shape:
        raise ValueError(f"labels and brain must be 3D arrays of one shape, got {labels.shape} and {brain.shape}")
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be three positive lengths in mm, got {spacing.tolist()}")
    present = set(np.unique(labels).tolist())
    if not present <= {0, NECROSIS, EDEMA, ENHANCING}:
        raise ValueError(
            f"labels must be BraTS 2023 {{0,1,2,3}}, got {sorted(present)}; convert with imaging.labels.to_brats2023"
        )
    if present <= {0}:
        raise ValueError("the source mask is empty (no tumour voxels)")
    return labels, brain, spacing


def _scale_range(volume_ml: float, stats: MaskStats | None) -> tuple[float, float]:
    """``SCALE_RANGE`` narrowed to the scalings that map ``volume_ml`` into the class's range."""
    lo, hi = SCALE_RANGE
    if stats is not None:
        lo = max(lo, (stats.min_ml / volume_ml) ** (1 / 3))
        hi = min(hi, (stats.max_ml / volume_ml) ** (1 / 3))
        if lo > hi:
            raise ValueError(
                f"a {volume_ml:.1f} ml tumour cannot be scaled by {SCALE_RANGE[0]}–{SCALE_RANGE[1]} "
                f"into the class's range {stats.min_ml:.1f}–{stats.max_ml:.1f} ml"
            )
    return lo, hi


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    rotation = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(rng.uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG, 3))):
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i] = turn[j, j] = np.cos(angle)
        turn[i, j], turn[j, i] = -np.sin(angle), np.sin(angle)
        rotation = rotation @ turn
    return rotation


def _elastic_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    """(3, *shape) displacement in mm: random vectors every ``ELASTIC_CELL_MM``, blended by cubic B-splines.

    Separable, so one small matrix product per axis: a brain-sized crop costs milliseconds, not seconds.
    """
    amplitude = rng.uniform(*ELASTIC_MM)
    weights = [_bspline_weights(n, ELASTIC_CELL_MM / s) for n, s in zip(shape, spacing)]
    field = rng.standard_normal((3, *(w.shape[1] for w in weights))).astype(np.float32)
    for axis, w in enumerate(weights):
        field = np.moveaxis(np.tensordot(w, field, axes=(1, axis + 1)), 0, axis + 1)
    return field * np.float32(amplitude)


def _bspline_weights(n: int, cell: float) -> np.ndarray:
    """(n, knots) cubic B-spline weights of knots every ``cell`` voxels, normalised to unit variance per voxel."""
    cell = max(float(cell), 1.0)
    knots = np.arange(-2 * cell, n + 2 * cell, cell)
    t = np.abs(np.arange(n)[:, None] - knots[None]) / cell
    w = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return (w / np.sqrt((w**2).sum(1, keepdims=True))).astype(np.float32)


def _deform(source: _Source, spacing: np.ndarray, rng: np.random.Generator, scales: tuple[float, float]) -> np.ndarray:
    """The source tumour rotated, scaled and elastically deformed, as labels on its own tight crop."""
    rotation = _random_rotation(rng)
    scale = float(np.exp(rng.uniform(np.log(scales[0]), np.log(scales[1]))))
    reach_mm = source.radius_mm * scale + 3 * ELASTIC_MM[1]
    half = np.ceil(reach_mm / spacing).astype(int)
    shape = tuple(int(2 * h + 1) for h in half)
    elastic = _elastic_field(rng, shape, spacing)
    axes_mm = [((np.arange(n) - h) * s).astype(np.float32) for n, h, s in zip(shape, half, spacing)]
    # output point p (mm from the new centroid) came from source point (s R)^-1 p, then displaced
    inverse = (rotation.T / scale).astype(np.float32)
    coords = np.empty((3, *shape), np.float32)
    for k in range(3):
        source_mm = sum(inverse[k, j] * axes_mm[j].reshape([-1 if a == j else 1 for a in range(3)]) for j in range(3))
        coords[k] = np.float32(source.centroid[k]) + (source_mm + elastic[k]) / np.float32(spacing[k])
    maps = [ndimage.map_coordinates(region, coords, order=1, mode="constant", cval=0.0) for region in source.regions]
    wt, tc, et = (m > 0.5 for m in maps)
    labels = np.zeros(shape, np.uint8)
    labels[wt] = EDEMA
    labels[wt & tc] = NECROSIS
    labels[wt & tc & et] = ENHANCING
    if not wt.any():
        return labels
    hits = np.argwhere(wt)
    return labels[tuple(slice(a, b) for a, b in zip(hits.min(0), hits.max(0) + 1))]


def _place(crop: np.ndarray, brain: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """``crop`` at a random corner among those that keep every tumour voxel in the brain; None where none does.

    The search runs on a grid of ``step`` voxels per axis, conservatively: a coarse brain cell counts only when all
    its voxels are brain, a coarse tumour cell as soon as one voxel is tumour.
    """
    step = np.maximum(np.round(PLACEMENT_STEP_MM / spacing).astype(int), 1)
    coarse_brain = _pool(brain, step, np.all)
    coarse_tumour = _pool(crop > 0, step, np.any)
    if any(t > b for t, b in zip(coarse_tumour.shape, coarse_brain.shape)):
        return None
    outside = (~coarse_brain).astype(np.float64)
    # the number of tumour cells that would lie outside the brain, per corner
    count = signal.fftconvolve(outside, coarse_tumour[::-1, ::-1, ::-1].astype(np.float64), mode="valid")
    corners = np.argwhere(count < 0.5)
    if not len(corners):
        return None
    corner = corners[rng.integers(len(corners))] * step
    box = tuple(slice(int(c), int(c) + n) for c, n in zip(corner, crop.shape))
    tumour = crop > 0
    if not brain[box][tumour].all():  # cannot happen: the coarse search is conservative
        return None
    out = np.zeros(brain.shape, np.uint8)
    out[box][tumour] = crop[tumour]
    return out


def _pool(mask: np.ndarray, step: np.ndarray, reduce) -> np.ndarray:
    """Blocks of ``step`` voxels reduced to one (``np.all`` or ``np.any``); the edge is padded with False."""
    padded_shape = [int(np.ceil(n / s)) * s for n, s in zip(mask.shape, step)]
    padded = np.zeros(padded_shape, bool)
    padded[tuple(slice(0, n) for n in mask.shape)] = mask
    blocks = padded.reshape(
        padded_shape[0] // step[0], step[0], padded_shape[1] // step[1], step[1], padded_shape[2] // step[2], step[2]
    )
    return reduce(blocks, axis=(1, 3, 5))
