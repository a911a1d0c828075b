"""Is an LDM output a brain? Figures that an empty, blurred or texture-filled volume cannot pass.

Every function takes model-grid volumes as z-scores over the brain (the LDM's intensities: background 0) and is run
on the real subjects as well as on the samples, so each figure has its real baseline beside it.

- ``tissue_region``: the head's tissue, found the same way in both: voxels where any contrast is off zero by more
  than ``TISSUE_Z``, closed, holes filled, largest connected component. A brain is ~1.1–1.5 L and fills ~45–60 % of
  its bounding box; a texture block fills its box (~100 %) and a field-of-view of noise is one huge region.
- ``anatomy``: region volume (L), box fill, background level (mean |z| outside the region, dilated by one voxel),
  the tumour's fraction inside the region, CSF-like fluid (top 5 % of T2 in healthy tissue) against healthy tissue
  on T1 and FLAIR (negative = dark, as in real MRI), and the tumour contrasts on an MRI-like positive scale (z + 4):
  FLAIR oedema / surrounding tissue, T1C enhancing / necrosis, T1C enhancing / surrounding tissue, and the
  enhancement T1C − T1 in the enhancing rim minus the same in healthy tissue (z).
- ``pearson_in``: correlation of two volumes inside a region, for diversity (two samples of one mask, two real
  subjects), the mask effect (one seed on two masks, where the masks differ) and the class effect.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..imaging.tissue import tissue_region

MRI_OFFSET = 4.0  # z + 4: a positive, MRI-like scale on which ratios mean something
SHELL_MM = (3.0, 15.0)  # "surrounding tissue": this far outside the tumour


def _mean(img: np.ndarray, region: np.ndarray) -> float:
    return float(img[region].mean()) if region.any() else float("nan")


def anatomy(image: np.ndarray, labels: np.ndarray, spacing, modalities=("t1", "t1c", "t2", "flair")) -> dict:
    """Figures for one (C, X, Y, Z) volume with its BraTS 2023 labels (1 necrosis, 2 oedema, 3 enhancing)."""
    mods = {m: image[i] for i, m in enumerate(modalities)}
    spacing = np.asarray(spacing, dtype=float)
    tissue = tissue_region(image)
    out: dict[str, float] = {"tissue_litres": float(tissue.sum() * spacing.prod() / 1e6)}
    if tissue.any():
        idx = np.nonzero(tissue)
        box = np.prod([hi - lo + 1 for lo, hi in ((i.min(), i.max()) for i in idx)])
        out["box_fill"] = float(tissue.sum() / box)
    else:
        out["box_fill"] = float("nan")
    outside = ~ndimage.binary_dilation(tissue, iterations=1)
    out["background_abs_z"] = float(np.abs(image[:, outside]).mean()) if outside.any() else float("nan")
    tumour = labels > 0
    out["tumour_inside_tissue"] = float((tumour & tissue).sum() / tumour.sum()) if tumour.any() else float("nan")
    healthy = tissue & ~ndimage.binary_dilation(tumour, iterations=2)
    if healthy.any() and {"t1", "t2", "flair"} <= mods.keys():
        t2 = mods["t2"][healthy]
        fluid = healthy & (mods["t2"] >= np.quantile(t2, 0.95))
        for m in ("t1", "flair"):
            out[f"fluid_minus_brain_{m}"] = _mean(mods[m], fluid) - _mean(mods[m], healthy)
    dist = ndimage.distance_transform_edt(~tumour, sampling=spacing)
    shell = tissue & (dist > SHELL_MM[0]) & (dist < SHELL_MM[1]) & healthy
    mri = {m: v + MRI_OFFSET for m, v in mods.items()}
    edema, enhancing, necrosis = labels == 2, labels == 3, labels == 1
    if "flair" in mri and edema.any() and shell.any():
        out["flair_edema_over_shell"] = _mean(mri["flair"], edema) / _mean(mri["flair"], shell)
    if "t1c" in mri and enhancing.any():
        if necrosis.any():
            out["t1c_enhancing_over_necrosis"] = _mean(mri["t1c"], enhancing) / _mean(mri["t1c"], necrosis)
        if shell.any():
            out["t1c_enhancing_over_shell"] = _mean(mri["t1c"], enhancing) / _mean(mri["t1c"], shell)
        if "t1" in mods and healthy.any():
            diff = mods["t1c"] - mods["t1"]
            out["enhancement_z"] = _mean(diff, enhancing) - _mean(diff, healthy)
    return out


def pearson_in(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """Pearson r of two same-shaped volumes (all channels) over ``region`` (spatial, broadcast over channels)."""
    if region is not None:
        region = np.broadcast_to(region, a.shape)
        a, b = a[region], b[region]
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def mean_pairwise_r(volumes, region_of=None) -> float:
    """Mean Pearson r over all pairs; ``region_of(a, b)`` picks the region of each pair (default: everywhere)."""
    rs = [
        pearson_in(volumes[i], volumes[j], region_of(i, j) if region_of else None)
        for i in range(len(volumes))
        for j in range(i + 1, len(volumes))
    ]
    return float(np.nanmean(rs)) if rs else float("nan")


def summarise(rows: list[dict]) -> dict[str, float]:
    """Mean of each figure over volumes (NaN where a volume lacks the region)."""
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.nanmean([r.get(k, np.nan) for r in rows])) for k in keys}
