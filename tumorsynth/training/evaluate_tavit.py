"""Evaluating a TA-ViT checkpoint on held-out BraTS-format subjects with the paper's metrics, per region.

Each subject's T1 (+ FLAIR) goes through ``TAViTGenerator`` as an upload would (its own geometry in, the same out); the
synthetic T1C is compared with the real T1C z-scored over its non-zero voxels (the training target). Regions, as in
the paper: tumour = the subject's segmentation (all labels), healthy = brain (non-zero T1) minus tumour. Per region:

- NMSE = Σ(ŷ − y)² / Σy²;
- PSNR = 10·log10(R² / MSE), R the real T1C's range (max − min) over the subject's brain;
- NCC = Pearson's correlation of ŷ and y;
- SSIM: the mean over the region of a slice-wise SSIM map (Gaussian window σ = 1.5 voxels in-plane, range R).

Reported as mean ± std over subjects (subjects without tumour are left out of the tumour row). Because the images are
z-scores rather than the paper's [0, 1] intensities, NMSE and PSNR are not on the paper's scale; NCC and SSIM are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..models.base import GenerationParams
from ..models.registry import ModelEntry
from ..models.tavit.configs import image_inputs
from ..models.tavit.runner import TAViTGenerator
from ..models.tavit.slices import zscore_brain
from .brats import find_subjects, load_subject

METRICS = ("nmse", "psnr", "ncc", "ssim")
REGIONS = ("tumour", "healthy")


@dataclass
class _Upload:
    """What the runner reads of an uploaded ``imaging.nifti.Volume``."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape[:3])


def held_out(entry: ModelEntry, data_dir, n: int):
    """The checkpoint's validation subjects found under ``data_dir``, else the last ``n``."""
    subjects = [s for s in find_subjects(data_dir) if s.seg is not None]
    val_ids = set((entry.config.get("training") or {}).get("validation_ids", []))
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


def region_metrics(pred: np.ndarray, true: np.ndarray, region: np.ndarray, data_range: float,
                   ssim: np.ndarray | None = None) -> dict[str, float]:
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


def evaluate_subject(gen: TAViTGenerator, subject, use_true_mask: bool = False) -> dict:
    names = image_inputs(gen.entry.config)
    data = load_subject(subject, (*names, "t1c"))
    uploads = {n: _Upload(data["image"][i], data["affine"]) for i, n in enumerate(names)}
    if use_true_mask:
        uploads["mask"] = _Upload(data["seg"], data["affine"])
    params = GenerationParams(num_samples=1, seed=0, sampler="direct", steps=1, modalities=("t1c",))
    pred = gen.generate(params, uploads, lambda done, total: None)[0].data
    true = zscore_brain(data["image"][-1])
    brain = data["image"][0] != 0
    tumour = brain & (data["seg"] > 0)
    data_range = float(true[brain].max() - true[brain].min()) if brain.any() else 1.0
    ssim = ssim_map(pred, true, data_range)
    return {"id": subject.id,
            "tumour": region_metrics(pred, true, tumour, data_range, ssim),
            "healthy": region_metrics(pred, true, brain & ~tumour, data_range, ssim)}


def evaluate_tavit(entry: ModelEntry, data_dir, subjects: int = 8, device: str = "cpu",
                   use_true_mask: bool = False) -> dict:
    """Per-region metrics of ``entry`` on up to ``subjects`` held-out subjects; ``use_true_mask`` conditions on
    the subjects' own segmentations instead of the predicted ones."""
    chosen = held_out(entry, data_dir, subjects)
    if not chosen:
        raise ValueError(f"no subjects with a segmentation under {data_dir}")
    gen = TAViTGenerator(entry, device)
    rows = [evaluate_subject(gen, s, use_true_mask) for s in chosen]
    summary = {}
    for region in REGIONS:
        summary[region] = {}
        for m in METRICS:
            values = np.array([r[region][m] for r in rows], dtype=np.float64)
            values = values[np.isfinite(values)]
            summary[region][m] = {"mean": float(values.mean()) if values.size else float("nan"),
                                  "std": float(values.std()) if values.size else float("nan"), "n": int(values.size)}
    return {"model": entry.id, "trained_on": entry.trained_on, "subjects": [s.id for s in chosen],
            "segmentation": "true" if use_true_mask else "predicted", "per_subject": rows, "summary": summary}


def format_report(report: dict) -> str:
    lines = [f"{report['model']}  (trained on: {report['trained_on']})",
             f"held-out subjects: {len(report['subjects'])}; segmentation: {report['segmentation']}", "",
             f"{'region':8} {'n':>3} " + " ".join(f"{m.upper():>21}" for m in METRICS)]
    for region, row in report["summary"].items():
        cells = []
        for m in METRICS:
            mean, std = row[m]["mean"], row[m]["std"]
            cells.append(f"{mean:10.4g} ± {std:<8.3g}")
        lines.append(f"{region:8} {row['nmse']['n']:>3} " + " ".join(f"{c:>21}" for c in cells))
    return "\n".join(lines)
