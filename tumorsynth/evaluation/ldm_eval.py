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

from ..data.brats import find_subjects
from ..data.subjects import prepare_subject
from ..imaging.geometry import centred_affine
from ..imaging.labels import to_regions
from ..models.base import GenerationParams
from ..models.ldm.network import MaskConditionedLDM
from ..models.ldm.runner import LDMGenerator
from ..models.registry import ModelEntry
from .anatomy import anatomy, mean_pairwise_r, pearson_in, summarise, tissue_region
from .fidelity import metric_tensor

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


def evaluate_ldm(
    entry: ModelEntry,
    data_dir,
    subjects: int = 8,
    samples: int = 2,
    sampler: str | None = None,
    steps: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    fidelity_epochs: int = 0,
    feature_weights: str | None = None,
    options: dict | None = None,
) -> dict:
    from monai.metrics import (
        MAEMetric,
        MMDMetric,
        MultiScaleSSIMMetric,
        PSNRMetric,
        SSIMMetric,
    )

    gen = LDMGenerator(entry, device)
    net = gen.network
    if not isinstance(net, MaskConditionedLDM):  # LDMGenerator types its network as any nn.Module
        raise TypeError(f"{entry.id}: the LDM generator holds a {type(net).__name__}, not a MaskConditionedLDM")
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
    regions = torch.from_numpy(np.stack([to_regions(lab) for lab in labels])).float().to(device)
    known = [s.tumor_class in entry.classes for s in chosen]
    class_ids = torch.tensor([entry.classes.index(s.tumor_class) + 1 if k else 0 for s, k in zip(chosen, known)])
    with torch.inference_mode():  # (a SPADE decoder draws from the subject's own regions and class)
        recon = torch.cat(
            [net.reconstruct(b, r, c) for b, r, c in zip(real.split(2), regions.split(2), class_ids.split(2))]
        )
    recon_table = {}
    for c, m in enumerate(mods):
        t, r = real[:, c : c + 1].float(), recon[:, c : c + 1].float()
        rng = float(t.max() - t.min())
        recon_table[m] = {
            "psnr": float(metric_tensor(PSNRMetric(max_val=rng)(r, t)).mean()),
            "ssim": float(metric_tensor(SSIMMetric(spatial_dims=3, data_range=rng, win_size=5)(r, t)).mean()),
            "mae": float(metric_tensor(MAEMetric()(r, t)).mean()),
        }
    sampler = sampler or entry.default_sampler
    steps = steps or entry.sampler(sampler).default_steps
    affine = centred_affine(entry.output_shape, entry.output_spacing)
    generated, diversity, contrast, sample_r = [], [], [], []

    def sample(lab, n, seed_, tumor_class):
        params = GenerationParams(
            num_samples=n,
            seed=seed_,
            sampler=sampler,
            steps=steps,
            modalities=tuple(mods),
            output_grid="model",
            tumor_class=tumor_class,
            options=dict(options or {}) if tumor_class else {},
        )
        outs = gen.generate(params, {"mask": GridMask(lab, affine)}, lambda done, total: None)
        return torch.stack(
            [torch.from_numpy(np.stack([o.data for o in outs if o.sample_index == k])) for k in range(n)]
        )  # (n, C, X, Y, Z)

    classes = [s.tumor_class if s.tumor_class in entry.classes else None for s in chosen]
    for i, lab in enumerate(labels):
        vols = sample(lab, samples, seed + 1000 * i, classes[i])
        generated.append(vols[0])
        contrast.append(mask_contrast({m: vols[0][c].numpy() for c, m in enumerate(mods)}, lab, affine))
        if samples > 1:
            diversity.append(ms_ssim_pairs(vols, MultiScaleSSIMMetric))
            v = vols.numpy()
            sample_r.append(mean_pairwise_r(v, lambda a, b: tissue_region(v[a]) | tissue_region(v[b])))
    fake = torch.stack(generated)
    anatomy_report = anatomy_and_effects(
        sample, real.cpu().numpy(), fake.numpy(), labels, classes, entry, seed, sample_r
    )
    pool = lambda x: torch.nn.functional.avg_pool3d(x.float(), 2)
    mmd = {
        m: float(MMDMetric(y_mapping=pool)(fake[:, c : c + 1], real[:, c : c + 1].cpu())) for c, m in enumerate(mods)
    }
    fidelity, fid_value = None, None
    if feature_weights and len(chosen) > 1:
        from .features import extract_features, fid, load_medicalnet

        medicalnet = load_medicalnet(feature_weights)
        fid_value = fid(extract_features(medicalnet, real.cpu()), extract_features(medicalnet, fake))
    if fidelity_epochs > 0:
        # Mask fidelity: a segmenter trained on the real held-out volumes segments the synthetic ones; Dice against
        # the masks they were conditioned on (the real segmenter's own Dice on real data is the ceiling).
        from .features import (
            extract_features,
            fid,
            train_feature_classifier,
        )
        from .fidelity import mask_dice, train_segmenter

        masks = torch.from_numpy(np.stack(labels))
        segmenter = train_segmenter(real.cpu(), masks, epochs=fidelity_epochs, seed=seed)
        fidelity = {"synthetic": mask_dice(segmenter, fake, masks), "real": mask_dice(segmenter, real.cpu(), masks)}
        classes = [entry.classes.index(s.tumor_class) if s.tumor_class in entry.classes else 0 for s in chosen]
        extractor = train_feature_classifier(
            real.cpu(), torch.tensor(classes), epochs=fidelity_epochs, seed=seed, channels=(4, 8, 8, 8)
        )
        if len(chosen) > 8 and fid_value is None:  # the Fréchet distance needs more samples than features
            fid_value = fid(extract_features(extractor, real.cpu()), extract_features(extractor, fake))
    return {
        "model": entry.id,
        "trained_on": entry.trained_on,
        "subjects": [s.id for s in chosen],
        "options": dict(options or {}),
        "mask_fidelity_dice": fidelity,
        "fid": fid_value,
        "fid_features": ("MedicalNet resnet10 (local weights)" if feature_weights else "in-house LGG/HGG classifier")
        if fid_value is not None
        else None,
        "mask_contrast": {
            k: float(np.nanmean([c.get(k, np.nan) for c in contrast]))
            for k in ("flair_edema_vs_shell", "t1c_enhancing_vs_necrosis")
        },
        "reconstruction": recon_table,
        "anatomy": anatomy_report,
        "samples": {
            "sampler": sampler,
            "steps": steps,
            "per_mask": samples,
            "ms_ssim_between_samples": float(np.mean(diversity)) if diversity else None,
            "mmd_vs_real": mmd,
        },
    }


def anatomy_and_effects(
    sample, real: np.ndarray, fake: np.ndarray, labels, classes, entry, seed: int, sample_r: list[float]
) -> dict:
    """``evaluation.anatomy``'s figures for the real subjects and for one sample of each of their masks, plus
    diversity, mask effect and class effect, each beside its real baseline."""
    spacing = entry.output_spacing
    mods = tuple(entry.modalities)
    real_rows = [anatomy(x, lab, spacing, mods) for x, lab in zip(real, labels)]
    fake_rows = [anatomy(x, lab, spacing, mods) for x, lab in zip(fake, labels)]
    real_r = mean_pairwise_r(real, lambda a, b: tissue_region(real[a]) | tissue_region(real[b]))
    # one seed on two masks: the volumes must differ where the masks differ (and may agree elsewhere)
    mask_r, mask_r_all = [], []
    for i in range(len(labels) - 1):
        a, b = labels[i], labels[i + 1]
        pair = sample(a, 1, seed, classes[i])[0].numpy(), sample(b, 1, seed, classes[i])[0].numpy()
        differ = (a > 0) ^ (b > 0)
        mask_r.append(pearson_in(*pair, differ))
        mask_r_all.append(pearson_in(*pair))
    # class effect: one mask and one seed, LGG then HGG; the phantoms' LGG core is brighter on FLAIR than HGG's
    core_flair: dict[str, list[float]] = {"LGG": [], "HGG": []}
    class_r = []
    f = mods.index("flair") if "flair" in mods else None
    if {"LGG", "HGG"} <= set(entry.classes) and f is not None:
        for lab in labels[:4]:
            core = (lab == 1) | (lab == 3)
            if not core.any():
                continue
            lgg, hgg = (sample(lab, 1, seed + 7, c)[0].numpy() for c in ("LGG", "HGG"))
            core_flair["LGG"].append(float(lgg[f][lab == 1].mean()) if (lab == 1).any() else np.nan)
            core_flair["HGG"].append(float(hgg[f][lab == 1].mean()) if (lab == 1).any() else np.nan)
            class_r.append(pearson_in(lgg, hgg, lab > 0))
    real_core = (
        {
            c: [float(x[f][lab == 1].mean()) for x, lab, k in zip(real, labels, classes) if k == c and (lab == 1).any()]
            for c in ("LGG", "HGG")
        }
        if f is not None
        else {}
    )
    nanmean = lambda v: float(np.nanmean(v)) if len(v) and not np.all(np.isnan(v)) else float("nan")
    return {
        "real": summarise(real_rows),
        "generated": summarise(fake_rows),
        "between_samples_r": {"generated_same_mask": nanmean(sample_r), "real_between_subjects": real_r},
        "mask_effect_r": {"where_masks_differ": nanmean(mask_r), "whole_volume": nanmean(mask_r_all)},
        "class_effect": {
            "generated_core_flair_lgg_minus_hgg": nanmean(core_flair["LGG"]) - nanmean(core_flair["HGG"]),
            "real_core_flair_lgg_minus_hgg": nanmean(real_core.get("LGG", [])) - nanmean(real_core.get("HGG", [])),
            "generated_lgg_vs_hgg_r_in_tumour": nanmean(class_r),
        },
    }


ANATOMY_TARGETS = {
    "tissue_litres": "0.9–2.4",
    "box_fill": "0.35–0.75",
    "background_abs_z": "< 0.1",
    "tumour_inside_tissue": "1",
    "fluid_minus_brain_t1": "< 0",
    "fluid_minus_brain_flair": "< 0",
    "flair_edema_over_shell": "> 1.15",
    "t1c_enhancing_over_necrosis": "> 1.15",
    "t1c_enhancing_over_shell": "> 1",
    "enhancement_z": "≥ 1.0",
}


def format_anatomy(a: dict) -> list[str]:
    lines = ["", f"{'anatomy (model grid)':30} {'real':>9} {'generated':>10}  target"]
    for k, target in ANATOMY_TARGETS.items():
        lines.append(
            f"{k:30} {a['real'].get(k, float('nan')):9.3f} {a['generated'].get(k, float('nan')):10.3f}  {target}"
        )
    d, m, c = a["between_samples_r"], a["mask_effect_r"], a["class_effect"]
    lines += [
        f"{'r between samples (in tissue)':30} {d['real_between_subjects']:9.3f} "
        f"{d['generated_same_mask']:10.3f}  real: two subjects; generated: two seeds, one mask",
        f"{'r, one seed on two masks':30} {'':9} {m['where_masks_differ']:10.3f}  < 0.9 where the masks "
        f"differ (whole volume {m['whole_volume']:.3f})",
        f"{'core FLAIR, LGG − HGG (z)':30} {c['real_core_flair_lgg_minus_hgg']:9.3f} "
        f"{c['generated_core_flair_lgg_minus_hgg']:10.3f}  same sign and size as real; LGG/HGG r in tumour "
        f"{c['generated_lgg_vs_hgg_r_in_tumour']:.3f}",
    ]
    return lines


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
        for name, region in (
            ("edema", labels == 2),
            ("enhancing", labels == 3),
            ("necrosis", labels == 1),
            ("shell", shell),
        ):
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
    lines = [
        f"{report['model']}  (trained on: {report['trained_on']})",
        f"held-out subjects: {len(report['subjects'])}",
        "",
        f"{'contrast':9} {'PSNR':>7} {'SSIM':>7} {'MAE':>7} {'MMD':>9}",
    ]
    for m, row in report["reconstruction"].items():
        lines.append(
            f"{m:9} {row['psnr']:7.2f} {row['ssim']:7.3f} {row['mae']:7.3f} {report['samples']['mmd_vs_real'][m]:9.3g}"
        )
    s = report["samples"]
    div = s["ms_ssim_between_samples"]
    lines += [
        "",
        f"samples: {s['sampler']} {s['steps']} steps, {s['per_mask']} per mask; MS-SSIM between samples "
        f"{'n/a' if div is None else f'{div:.3f}'} (lower = more diverse)",
    ]
    if report.get("mask_fidelity_dice"):
        f = report["mask_fidelity_dice"]
        lines.append(
            "mask fidelity (Dice of a segmenter trained on the real volumes): "
            + ", ".join(f"{r} synthetic {f['synthetic'][r]:.3f} / real {f['real'][r]:.3f}" for r in f["synthetic"])
        )
    if report.get("fid") is not None:
        lines.append(f"FID ({report['fid_features']} features): {report['fid']:.3f}")
    c = report.get("mask_contrast") or {}
    lines.append("mask contrast of samples (z): " + ", ".join(f"{k} {v:+.3f}" for k, v in c.items()))
    if report.get("anatomy"):
        lines += format_anatomy(report["anatomy"])
    return "\n".join(lines)
