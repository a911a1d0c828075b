"""Intensity scales a job may ask for (``"intensity"``), applied to the models' z-scores at write time.

Every family generates z-scores over the brain with background 0 (the papers' normalisation). Pipelines want other
scales: ``unit`` maps the brain's 0.5–99.5th percentiles to [0, 1] (nnU-Net / MONAI ``ScaleIntensityRangePercentiles``
style), ``scanner`` puts the brain back on a typical scanner scale, non-negative int16, with the mean and standard
deviation per contrast measured on the checkpoint's training data (``config.json`` ``intensity.scanner``).

The brain is found as the evaluation finds tissue (``imaging.tissue.tissue_region``: any contrast off zero, closed,
filled, largest component), over all contrasts of one sample together, so every contrast of a sample shares it.
Outside it every scale writes 0.
"""

from __future__ import annotations

import numpy as np

SCALES = ("zscore", "unit", "scanner")
UNIT_PERCENTILES = (0.5, 99.5)
INT16_MAX = 32767


def brain_region(volumes: list[np.ndarray]) -> np.ndarray:
    """Boolean brain region shared by one sample's contrasts (each (X, Y, Z) or (X, Y))."""
    from .tissue import TISSUE_Z, tissue_region

    stack = np.stack([np.asarray(v, dtype=np.float32) for v in volumes])
    if stack.ndim == 3:  # 2D slices: (C, X, Y) -> (C, X, Y, 1)
        stack = stack[..., None]
    region = tissue_region(stack) if stack.shape[-1] > 2 else np.zeros(stack.shape[1:], bool)
    if not region.any():  # a slice or a thin slab: closing erodes it away, so take tissue as it is
        region = np.asarray((np.abs(stack) > TISSUE_Z).any(axis=0))
    return region.reshape(np.shape(volumes[0]))


def native_scale(config: dict) -> tuple[str, float]:
    """(the scale a checkpoint's outputs come in, the factor that turns them into z-scores).

    LDM and TA-ViT write z-scores; VQGAN z-scores clipped to ±z_clip and divided by it; StyleGAN2 slices in [0, 1]
    (each slice by its own 99.5th percentile), which cannot be turned back into z-scores.
    """
    intensity = config.get("intensity") or {}
    if "z_clip" in intensity:
        return "zscore", float(intensity["z_clip"])
    if list(intensity.get("range") or []) == [0.0, 1.0]:
        return "unit", 1.0
    return "zscore", 1.0


def scale_errors(config: dict, model_id: str, scale: str, modalities) -> str | None:
    """Why a checkpoint cannot write ``scale``, or None."""
    native, _ = native_scale(config)
    if native == "unit" and scale != "unit":
        return f"{model_id} writes slices in [0, 1] only; ask for intensity 'unit' or leave it out"
    if scale == "scanner" and (missing := missing_scanner_contrasts(config, modalities)):
        return (
            f"checkpoint {model_id} records no scanner-scale statistics for {missing} (config.json "
            "intensity.scanner, written by the trainer from its training data); ask for 'zscore' or 'unit'"
        )
    return None


def offered_scales(config: dict, modalities) -> dict:
    """What ``GET /v1/models`` declares: the default scale and those a job may ask for."""
    return {
        "default": native_scale(config)[0],
        "scales": [s for s in SCALES if scale_errors(config, "", s, modalities) is None],
    }


def scanner_stats(config: dict) -> dict[str, dict[str, float]] | None:
    """``{contrast: {"mean", "std"}}`` recorded in a checkpoint's config, or None when it has none."""
    stats = (config.get("intensity") or {}).get("scanner")
    return stats or None


def missing_scanner_contrasts(config: dict, modalities) -> list[str]:
    stats = scanner_stats(config) or {}
    return [m for m in modalities if m not in stats]


def apply_scale(
    data: np.ndarray, scale: str, region: np.ndarray, modality: str, config: dict
) -> tuple[np.ndarray, dict]:
    """(one generated volume on ``scale``, the sidecar fields stating it); ``config`` is its checkpoint's."""
    native, factor = native_scale(config)
    if native == "unit":
        if scale != "unit":
            raise ValueError(scale_errors(config, config.get("name", "this model"), scale, [modality]))
        return np.asarray(data, dtype=np.float32), {
            "IntensityScale": "unit",
            "IntensityUnits": "arbitrary units in [0, 1]",
            "IntensityParameters": {
                "Normalisation": (config.get("intensity") or {}).get("normalisation"),
                "Background": 0.0,
            },
        }
    z = np.asarray(data, dtype=np.float32)
    z = z if factor == 1.0 else z * np.float32(factor)  # no copy of the default: a 64-sample job is gigabytes
    if scale == "zscore":
        return z, {
            "IntensityScale": "zscore",
            "IntensityUnits": "z-score (standard deviations from the brain mean)",
            "IntensityParameters": {"Background": 0.0} | ({"ClippedAt": factor} if factor != 1.0 else {}),
        }
    if scale == "unit":
        lo, hi = np.percentile(z[region], UNIT_PERCENTILES) if region.any() else (0.0, 1.0)
        span = max(float(hi - lo), 1e-6)
        out = np.where(region, np.clip((z - lo) / span, 0.0, 1.0), 0.0).astype(np.float32)
        return out, {
            "IntensityScale": "unit",
            "IntensityUnits": "arbitrary units in [0, 1]",
            "IntensityParameters": {
                "LowPercentile": UNIT_PERCENTILES[0],
                "HighPercentile": UNIT_PERCENTILES[1],
                "LowZ": round(float(lo), 6),
                "HighZ": round(float(hi), 6),
                "Background": 0.0,
            },
        }
    if scale == "scanner":
        stats = scanner_stats(config) or {}
        if modality not in stats:
            raise ValueError(f"no scanner-scale statistics for {modality!r} in the checkpoint")
        mean, std = float(stats[modality]["mean"]), float(stats[modality]["std"])
        values = np.clip(np.rint(mean + std * z), 0, INT16_MAX)
        out = np.where(region, values, 0).astype(np.int16)
        return out, {
            "IntensityScale": "scanner",
            "IntensityUnits": "arbitrary units (scanner-like, int16)",
            "IntensityParameters": {
                "Mean": mean,
                "StandardDeviation": std,
                "Background": 0,
                "Source": "brain mean and standard deviation of this contrast in the checkpoint's training data",
            },
        }
    raise ValueError(f"unknown intensity scale {scale!r}; one of {SCALES}")
