"""Evaluating an LDM checkpoint on held-out BraTS-format subjects, with MONAI's metrics.

- Reconstruction (the paper's Table 1): PSNR, SSIM and MAE per contrast of ``autoencoder.reconstruct`` against the
  preprocessed subject on the model grid; the data range is the target's own (max − min) per contrast.
- Samples: one mask per held-out subject, ``samples`` samples each. Diversity is the mean MS-SSIM between samples of
  the same mask (lower = more diverse); realism is MONAI's MMD between generated and real volumes (both on the model
  grid, lower = closer).
- ``follows_mask``: does an output honour its mask? Mean intensity per tumour region against a shell of tissue around
  the tumour (3–15 mm outside it), in the geometry the outputs were mapped back to.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..imaging.geometry import centred_affine
from ..models.base import GenerationParams
from ..models.ldm.runner import LDMGenerator
from ..models.registry import ModelEntry
from .brats import find_subjects
from .ldm import prepare_subject

MS_SSIM_WEIGHTS = (0.5, 0.5)  # two scales: the model grids (32–128 voxels a side) are too small for MONAI's five


class GridMask:
    """A mask already on the model grid, shaped like an uploaded ``Volume`` (data, affine)."""

    def __init__(self, labels: np.ndarray, affine: np.ndarray):
        self.data, self.affine = labels, affine


def held_out(entry: ModelEntry, data_dir, n: int):
    subjects = find_subjects(data_dir)
    val_ids = set((entry.config.get("training") or {}).get("validation_ids", []))
    chosen = [s for s in subjects if s.id in val_ids] or subjects[-n:]
    return chosen[:n]



def evaluate_ldm(entry: ModelEntry, data_dir, subjects: int = 8, samples: int = 2, sampler: str | None = None,
                 steps: int | None = None, device: str = "cpu", seed: int = 0, fidelity_epochs: int = 0,
                 feature_weights: str | None = None) -> dict:
    from monai.metrics import (
        MAEMetric,
        MMDMetric,
        MultiScaleSSIMMetric,
        PSNRMetric,
        SSIMMetric,
    )

    gen = LDMGenerator(entry, device)
    net = gen.network
    grid, fov = tuple(entry.output_shape), tuple(entry.config["fov_mm"])
    mods = list(entry.modalities)
    chosen = held_out(entry, data_dir, subjects)
    if len(chosen) < 2:
        raise ValueError(f"need at least 2 held-out subjects under {data_dir}, found {len(chosen)}")
    reals, labels = [], []
    for s in chosen:
        image, seg = prepare_subject(s, grid, fov, tuple(mods))
        reals.append(torch.from_numpy(image))
        labels.append(seg)
    real = torch.stack(reals).to(device)  # (N, C, X, Y, Z)
    with torch.inference_mode():
        recon = torch.cat([net.autoencoder.reconstruct(b) for b in real.split(2)])
    recon_table = {}
    for c, m in enumerate(mods):
        t, r = real[:, c:c + 1].float(), recon[:, c:c + 1].float()
        rng = float(t.max() - t.min())
        recon_table[m] = {
            "psnr": float(PSNRMetric(max_val=rng)(r, t).mean()),
            "ssim": float(SSIMMetric(spatial_dims=3, data_range=rng, win_size=5)(r, t).mean()),
            "mae": float(MAEMetric()(r, t).mean()),
        }
    sampler = sampler or entry.default_sampler
    steps = steps or entry.sampler(sampler).default_steps
    affine = centred_affine(entry.output_shape, entry.output_spacing)
    generated, diversity, contrast = [], [], []
    for i, lab in enumerate(labels):
        params = GenerationParams(num_samples=samples, seed=seed + 1000 * i, sampler=sampler, steps=steps,
                                  modalities=tuple(mods), output_grid="model")
        outs = gen.generate(params, {"mask": GridMask(lab, affine)}, lambda done, total: None)
        vols = torch.stack([torch.from_numpy(np.stack([o.data for o in outs if o.sample_index == k]))
                            for k in range(samples)])  # (samples, C, X, Y, Z)
        generated.append(vols[0])
        contrast.append(mask_contrast({m: vols[0][c].numpy() for c, m in enumerate(mods)}, lab, affine))
        if samples > 1:
            diversity.append(ms_ssim_pairs(vols, MultiScaleSSIMMetric))
    fake = torch.stack(generated)
    pool = lambda x: torch.nn.functional.avg_pool3d(x.float(), 2)  # noqa: E731 — MMD on 2× downsampled volumes
    mmd = {m: float(MMDMetric(y_mapping=pool)(fake[:, c:c + 1], real[:, c:c + 1].cpu()))
           for c, m in enumerate(mods)}
    fidelity, fid_value = None, None
    if feature_weights and len(chosen) > 1:
        from ..evaluation.features import extract_features, fid, load_medicalnet

        medicalnet = load_medicalnet(feature_weights)
        fid_value = fid(extract_features(medicalnet, real.cpu()), extract_features(medicalnet, fake))
    if fidelity_epochs > 0:
        # Mask fidelity: a segmenter trained on the real held-out volumes segments the synthetic ones; Dice against
        # the masks they were conditioned on (the real segmenter's own Dice on real data is the ceiling).
        from ..evaluation.features import (
            extract_features,
            fid,
            train_feature_classifier,
        )
        from ..evaluation.fidelity import mask_dice, train_segmenter

        masks = torch.from_numpy(np.stack(labels))
        segmenter = train_segmenter(real.cpu(), masks, epochs=fidelity_epochs, seed=seed)
        fidelity = {"synthetic": mask_dice(segmenter, fake, masks), "real": mask_dice(segmenter, real.cpu(), masks)}
        classes = [entry.classes.index(s.tumor_class) if s.tumor_class in entry.classes else 0 for s in chosen]
        extractor = train_feature_classifier(real.cpu(), torch.tensor(classes), epochs=fidelity_epochs, seed=seed,
                                             channels=(4, 8, 8, 8))
        if len(chosen) > 8 and fid_value is None:  # the Fréchet distance needs more samples than features
            fid_value = fid(extract_features(extractor, real.cpu()), extract_features(extractor, fake))
    return {
        "model": entry.id, "trained_on": entry.trained_on, "subjects": [s.id for s in chosen],
        "mask_fidelity_dice": fidelity, "fid": fid_value,
        "fid_features": ("MedicalNet resnet10 (local weights)" if feature_weights else "in-house LGG/HGG classifier")
        if fid_value is not None else None,
        "mask_contrast": {k: float(np.nanmean([c.get(k, np.nan) for c in contrast]))
                          for k in ("flair_edema_vs_shell", "t1c_enhancing_vs_necrosis")},
        "reconstruction": recon_table,
        "samples": {"sampler": sampler, "steps": steps, "per_mask": samples,
                    "ms_ssim_between_samples": float(np.mean(diversity)) if diversity else None,
                    "mmd_vs_real": mmd},
    }


def ms_ssim_pairs(vols: torch.Tensor, metric_cls) -> float:
    """Mean MS-SSIM over all pairs of samples (each channel separately), data range from the pair."""
    values = []
    for a in range(len(vols)):
        for b in range(a + 1, len(vols)):
            x, y = vols[a][:, None].float(), vols[b][:, None].float()  # (C, 1, X, Y, Z): contrasts as a batch
            rng = float(torch.maximum(x.max(), y.max()) - torch.minimum(x.min(), y.min())) or 1.0
            metric = metric_cls(spatial_dims=3, data_range=rng, kernel_size=3, weights=MS_SSIM_WEIGHTS)
            values.append(float(metric(x, y).mean()))
    return float(np.mean(values))


def follows_mask(images: dict[str, np.ndarray], labels: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Region means of outputs on the mask's grid: edema/enhancing/necrosis and the tissue shell around the tumour."""
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    tumour = labels > 0
    dist = ndimage.distance_transform_edt(~tumour, sampling=spacing)
    shell = (dist > 3) & (dist < 15)
    out = {}
    for m, img in images.items():
        for name, region in (("edema", labels == 2), ("enhancing", labels == 3), ("necrosis", labels == 1),
                             ("shell", shell)):
            if region.any():
                out[f"{m}_{name}"] = float(img[region].mean())
    return out


def mask_contrast(images: dict[str, np.ndarray], labels: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """The two contrasts a mask-following output must show (z-score differences; the real data's are ~1.5 and ~3.5
    for the phantoms): FLAIR oedema minus the tissue shell around the tumour, T1C enhancing minus necrotic core."""
    r = follows_mask(images, labels, affine)
    out = {}
    if {"flair_edema", "flair_shell"} <= r.keys():
        out["flair_edema_vs_shell"] = r["flair_edema"] - r["flair_shell"]
    if {"t1c_enhancing", "t1c_necrosis"} <= r.keys():
        out["t1c_enhancing_vs_necrosis"] = r["t1c_enhancing"] - r["t1c_necrosis"]
    return out


def format_report(report: dict) -> str:
    lines = [f"{report['model']}  (trained on: {report['trained_on']})",
             f"held-out subjects: {len(report['subjects'])}", "",
             f"{'contrast':9} {'PSNR':>7} {'SSIM':>7} {'MAE':>7} {'MMD':>9}"]
    for m, row in report["reconstruction"].items():
        lines.append(f"{m:9} {row['psnr']:7.2f} {row['ssim']:7.3f} {row['mae']:7.3f} "
                     f"{report['samples']['mmd_vs_real'][m]:9.3g}")
    s = report["samples"]
    div = s["ms_ssim_between_samples"]
    lines += ["", f"samples: {s['sampler']} {s['steps']} steps, {s['per_mask']} per mask; MS-SSIM between samples "
                  f"{'n/a' if div is None else f'{div:.3f}'} (lower = more diverse)"]
    if report.get("mask_fidelity_dice"):
        f = report["mask_fidelity_dice"]
        lines.append("mask fidelity (Dice of a segmenter trained on the real volumes): " + ", ".join(
            f"{r} synthetic {f['synthetic'][r]:.3f} / real {f['real'][r]:.3f}" for r in f["synthetic"]))
    if report.get("fid") is not None:
        lines.append(f"FID ({report['fid_features']} features): {report['fid']:.3f}")
    c = report.get("mask_contrast") or {}
    lines.append("mask contrast of samples (z): " + ", ".join(f"{k} {v:+.3f}" for k, v in c.items()))
    return "\n".join(lines)

