"""Evaluating a TA-ViT checkpoint on held-out BraTS-format subjects with the paper's metrics, per region.

Each subject's T1 (+ FLAIR) goes through ``TAViTGenerator`` as an upload would (its own geometry in, the same out); the
synthetic T1C is compared with the real T1C z-scored over its non-zero voxels (the training target). Regions, as in
the paper: tumour = the subject's segmentation (all labels), healthy = brain (non-zero T1) minus tumour. Per region:

- NMSE = Σ(ŷ − y)² / Σy²;
- PSNR = 10·log10(R² / MSE), R the real T1C's range (max − min) over the subject's brain;
- NCC = Pearson's correlation of ŷ and y;
- SSIM: the mean over the region of a slice-wise SSIM map (Wang et al. 2004; our NumPy/SciPy ``ssim_map``: Gaussian
  window σ = 1.5 voxels in-plane, K1 = 0.01, K2 = 0.03, range R).

Reported as mean ± std over subjects (subjects without tumour are left out of the tumour row). Because the images are
z-scores rather than the paper's [0, 1] intensities, NMSE and PSNR are not on the paper's scale; NCC and SSIM are.

Beside each region's row is the same row for the baseline a model must beat: the subject's own T1 (z-scored over its
brain) copied as its T1C. And the enhancing-rim contrast: the mean of T1C − T1 (both z-scores) over the enhancing
tumour (label 3), of the prediction and of the truth, over the subjects that have one.

Held-out subjects: under the folder the checkpoint was trained from, its validation subjects; under any other folder
(subjects it never saw, whatever their names), the first ``subjects`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..data.brats import find_subjects, load_subject
from ..models.base import GenerationParams
from ..models.registry import ModelEntry
from ..models.tavit.configs import image_inputs
from ..models.tavit.runner import TAViTGenerator
from ..models.tavit.slices import zscore_brain

METRICS = ("nmse", "psnr", "ncc", "ssim")
REGIONS = ("tumour", "healthy")
SOURCES = ("model", "t1 copy")  # the synthetic T1C, and the T1 copied as the T1C
SSIM_NAME = "SSIM: evaluate_tavit.ssim_map (Wang et al. 2004, NumPy/SciPy; Gaussian σ 1.5 in-plane, K1 0.01, K2 0.03)"


@dataclass
class _Upload:
    """What the runner reads of an uploaded ``imaging.nifti.Volume``."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.data.shape[:3]
        return int(x), int(y), int(z)


def held_out(entry: ModelEntry, data_dir, n: int):
    """Under the training folder, the checkpoint's validation subjects (else its last ``n``); elsewhere the first ``n``.

    Phantom folders reuse names (Phantom_HGG_0006 is in every one), so a validation id means the same subject only in
    the folder the checkpoint was trained from.
    """
    subjects = [s for s in find_subjects(data_dir) if s.seg is not None]
    training = entry.config.get("training") or {}
    source = training.get("data")
    same = (
        Path(source).resolve() == Path(data_dir).resolve()
        if source
        else str(entry.trained_on).endswith(f"(from {Path(data_dir).name})")
    )
    if not same:
        return subjects[:n]
    val_ids = set(training.get("validation_ids", []))
    return ([s for s in subjects if s.id in val_ids] or subjects[-n:])[:n]


def ssim_map(pred: np.ndarray, true: np.ndarray, data_range: float, sigma: float = 1.5) -> np.ndarray:
    """Slice-wise SSIM map (Wang et al. 2004) of two (X, Y, Z) volumes, Gaussian window in-plane only."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = lambda a: ndimage.gaussian_filter(a.astype(np.float64), (sigma, sigma, 0))
    mu_p, mu_t = blur(pred), blur(true)
    var_p = blur(pred * pred) - mu_p**2
    var_t = blur(true * true) - mu_t**2
    cov = blur(pred * true) - mu_p * mu_t
    return ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))


def region_metrics(
    pred: np.ndarray, true: np.ndarray, region: np.ndarray, data_range: float, ssim: np.ndarray | None = None
) -> dict[str, float]:
    """NMSE, PSNR, NCC and SSIM of ``pred`` against ``true`` over the voxels of ``region``; NaN for an empty one."""
    if not region.any():
        return {m: float("nan") for m in METRICS}
    p, t = pred[region].astype(np.float64), true[region].astype(np.float64)
    err = float(((p - t) ** 2).sum())
    mse = err / p.size
    ps, ts = p - p.mean(), t - t.mean()
    denom = float(np.sqrt((ps**2).sum() * (ts**2).sum()))
    ssim = ssim_map(pred, true, data_range) if ssim is None else ssim
    return {
        "nmse": err / max(float((t**2).sum()), 1e-12),
        "psnr": float(10 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf"),
        "ncc": float((ps * ts).sum() / denom) if denom > 0 else float("nan"),
        "ssim": float(ssim[region].mean()),
    }


def rim_contrast(image: np.ndarray, t1: np.ndarray, enhancing: np.ndarray) -> float:
    """Mean T1C − T1 (z-scores) over the enhancing tumour; NaN without one."""
    return float((image[enhancing] - t1[enhancing]).mean()) if enhancing.any() else float("nan")


def evaluate_subject(gen: TAViTGenerator, subject, use_true_mask: bool = False, keep: bool = False) -> dict:
    names = image_inputs(gen.entry.config)
    data = load_subject(subject, (*names, "t1c"))
    seg = data["seg"]
    if seg is None:
        raise ValueError(f"subject {subject.id!r} has no segmentation: the metrics are per tumour region")
    uploads = {n: _Upload(data["image"][i], data["affine"]) for i, n in enumerate(names)}
    if use_true_mask:
        uploads["mask"] = _Upload(seg, data["affine"])
    params = GenerationParams(num_samples=1, seed=0, sampler="direct", steps=1, modalities=("t1c",))
    pred = gen.generate(params, uploads, lambda done, total: None)[0].data
    true = zscore_brain(data["image"][-1])
    t1 = zscore_brain(data["image"][0])
    brain = data["image"][0] != 0
    tumour = brain & (seg > 0)
    enhancing = brain & (seg == 3)
    data_range = float(true[brain].max() - true[brain].min()) if brain.any() else 1.0
    row = {
        "id": subject.id,
        "rim": {"model": rim_contrast(pred, t1, enhancing), "truth": rim_contrast(true, t1, enhancing)},
    }
    for source, image in zip(SOURCES, (pred, t1)):
        ssim = ssim_map(image, true, data_range)
        row[source] = {
            "tumour": region_metrics(image, true, tumour, data_range, ssim),
            "healthy": region_metrics(image, true, brain & ~tumour, data_range, ssim),
        }
    row |= row["model"]  # the model's rows also at the top level, as before
    if keep:
        row["volumes"] = {"t1": t1, "t1c": true, "pred": pred, "seg": seg}
    return row


def _mean_std(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return {
        "mean": float(values.mean()) if values.size else float("nan"),
        "std": float(values.std()) if values.size else float("nan"),
        "n": int(values.size),
    }


def evaluate_tavit(
    entry: ModelEntry,
    data_dir,
    subjects: int = 8,
    device: str = "cpu",
    use_true_mask: bool = False,
    montage: Path | None = None,
    montage_subjects: int = 2,
) -> dict:
    """Per-region metrics of ``entry`` and of the T1-copy baseline on up to ``subjects`` held-out subjects;
    ``use_true_mask`` conditions on the subjects' own segmentations instead of the predicted ones. ``montage``: a PNG
    of the first ``montage_subjects`` subjects with an enhancing tumour (T1, true T1C, predicted T1C)."""
    chosen = held_out(entry, data_dir, subjects)
    if not chosen:
        raise ValueError(f"no subjects with a segmentation under {data_dir}")
    gen = TAViTGenerator(entry, device)
    rows: list[dict] = []
    shown: list[tuple[str, dict]] = []
    for s in chosen:
        row = evaluate_subject(gen, s, use_true_mask, keep=montage is not None and len(shown) < montage_subjects)
        volumes = row.pop("volumes", None)
        if volumes is not None and (volumes["seg"] == 3).any():
            shown.append((s.id, volumes))
        rows.append(row)
    if montage is not None and shown:
        write_montage(shown, montage)
    summary = {
        source: {region: {m: _mean_std([r[source][region][m] for r in rows]) for m in METRICS} for region in REGIONS}
        for source in SOURCES
    }
    rim = {k: _mean_std([r["rim"][k] for r in rows]) for k in ("model", "truth")}
    return {
        "model": entry.id,
        "trained_on": entry.trained_on,
        "subjects": [s.id for s in chosen],
        "segmentation": "true" if use_true_mask else "predicted",
        "per_subject": rows,
        "summary": summary["model"],
        "baseline": summary["t1 copy"],
        "rim": rim,
        "ssim": SSIM_NAME,
        "montage": str(montage) if montage is not None and shown else None,
    }


def format_report(report: dict) -> str:
    lines = [
        f"{report['model']}  (trained on: {report['trained_on']})",
        f"held-out subjects: {len(report['subjects'])}; segmentation: {report['segmentation']}",
        report["ssim"],
        "",
        f"{'region':8} {'source':8} {'n':>3} " + " ".join(f"{m.upper():>21}" for m in METRICS),
    ]
    for region in REGIONS:
        for source, summary in (("model", report["summary"]), ("T1 copy", report["baseline"])):
            row = summary[region]
            cells = [f"{row[m]['mean']:10.4g} ± {row[m]['std']:<8.3g}" for m in METRICS]
            lines.append(f"{region:8} {source:8} {row['nmse']['n']:>3} " + " ".join(f"{c:>21}" for c in cells))
    rim = report["rim"]
    lines += [
        "",
        f"enhancing rim, T1C − T1 (z), n {rim['truth']['n']}: predicted {rim['model']['mean']:.3g} ± "
        f"{rim['model']['std']:.3g}, true {rim['truth']['mean']:.3g} ± {rim['truth']['std']:.3g}",
    ]
    if report.get("montage"):
        lines.append(f"montage: {report['montage']}")
    return "\n".join(lines)


# ----- montage -----------------------------------------------------------------------------------------------------
WINDOW = (-3.0, 5.0)  # z-scores shown black to white, the same for every panel so contrasts compare
COLUMNS = ("T1 (input)", "T1C (true)", "T1C (predicted)")


def _panel(image: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.clip((np.rot90(image) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def write_montage(subjects: list[tuple[str, dict]], path: Path) -> Path:
    """Axial, coronal and sagittal planes through each subject's enhancing-tumour centre: T1, true T1C, predicted."""
    tiles = []
    for sid, v in subjects:
        x, y, z = (int(round(c)) for c in ndimage.center_of_mass(v["seg"] == 3))
        for plane, cut in (("axial", np.s_[:, :, z]), ("coronal", np.s_[:, y, :]), ("sagittal", np.s_[x, :, :])):
            tiles.append((f"{sid} {plane}", [_panel(v[k][cut]) for k in ("t1", "t1c", "pred")]))
    side = max(max(p.shape) for _, panels in tiles for p in panels)
    head, gap = 16, 2
    canvas = Image.new("L", (len(COLUMNS) * (side + gap), head + len(tiles) * (side + head + gap)), 0)
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(COLUMNS):
        draw.text((c * (side + gap) + 4, 2), name, fill=255)
    for r, (label, panels) in enumerate(tiles):
        top = head + r * (side + head + gap)
        draw.text((4, top + 2), label + f"   window {WINDOW[0]:g} to {WINDOW[1]:g} z", fill=255)
        for c, p in enumerate(panels):
            canvas.paste(
                Image.fromarray(p), (c * (side + gap) + (side - p.shape[1]) // 2, top + head + (side - p.shape[0]) // 2)
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
