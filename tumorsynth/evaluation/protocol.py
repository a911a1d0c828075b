"""``tumorsynth eval utility``: the papers' downstream-utility protocol on any BraTS-format folder, end to end.

Real subjects → the model's grid (``data.subjects.prepare_subject``: the same preprocessing as training and serving).
Synthetic subjects per class → for a mask-conditioned model, masks from the mask bank made from the real masks of
that class on that grid (placed inside the real brains, rotated, scaled, deformed), then sampled; for a
class-conditioned model, ROIs of that class, with the real subjects as ROIs on the same grid. Then
``evaluation.utility.run_utility`` (k folds, real-only vs real + synthetic) and a JSON + PNG report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ..imaging.nifti import Volume
from ..models.base import GenerationParams
from ..models.loader import load_generator
from ..models.registry import ModelEntry
from .utility import run_utility, write_report


def _grid_mask(labels: np.ndarray, affine: np.ndarray) -> Volume:
    """A mask made on the model grid as the ``Volume`` a generator takes: its labels and affine (all a generator
    reads of a mask at ``output_grid="model"``), an empty header, and the digest and size of its voxels (there is no
    uploaded file)."""
    raw = np.ascontiguousarray(labels).tobytes()
    return Volume(
        data=labels,
        affine=affine,
        header=nib.Nifti1Header(),
        nifti_version=1,
        compressed=False,
        sha256=hashlib.sha256(raw).hexdigest(),
        size=len(raw),
    )


def real_on_model_grid(entry: ModelEntry, data_dir, modality: str, max_subjects: int | None = None):
    """(images (N, 1, *grid), labels (N,) class indices, segs, brain union) for subjects of the model's classes."""
    from ..data.brats import find_subjects
    from ..data.roi import load_rois
    from ..data.subjects import prepare_subject

    subjects = [s for s in find_subjects(data_dir) if s.tumor_class in entry.classes][:max_subjects]
    if entry.task == "class_to_roi":
        rois = load_rois(
            data_dir, entry.classes, entry.output_shape, entry.output_spacing, (modality,), max_subjects=max_subjects
        )
        keep = rois.classes > 0
        return rois.rois[keep], (rois.classes[keep] - 1).numpy(), None, None
    grid, fov = tuple(entry.output_shape), tuple(entry.config["fov_mm"])
    c = entry.modalities.index(modality)
    images, labels, segs = [], [], []
    for s in subjects:
        image, seg = prepare_subject(s, grid, fov, tuple(entry.modalities))
        images.append(image[c : c + 1])
        segs.append(seg)
        labels.append(entry.classes.index(s.tumor_class))
    stacked = np.stack(images)
    brain = (stacked[:, 0] != 0).all(axis=0) if len(stacked) else None
    return torch.from_numpy(stacked), np.asarray(labels), segs, brain


def synthesise(
    entry: ModelEntry,
    per_class: int,
    modality: str,
    segs,
    labels,
    brain,
    seed: int,
    steps: int | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    gen = load_generator(entry, device)
    out, out_labels = [], []
    total, done = per_class * len(entry.classes), 0
    spacing = np.asarray(entry.output_spacing, dtype=np.float64)
    affine = np.diag([*spacing, 1.0])
    for k, cls in enumerate(entry.classes):
        masks: list = [None] * per_class
        if entry.task == "mask_to_volume":
            from ..imaging.maskbank import generate_bank_masks

            sources = [s for s, lab in zip(segs, labels) if lab == k and (s > 0).any()]
            if not sources:
                raise ValueError(f"no real {cls} mask to make {cls} masks from")
            masks = generate_bank_masks(sources, brain, spacing, per_class, seed + 1000 * k)
        for i in range(per_class):
            sampler = entry.default_sampler
            params = GenerationParams(
                num_samples=1,
                seed=seed + 1000 * k + i,
                sampler=sampler,
                steps=steps or entry.sampler(sampler).default_steps,
                modalities=(modality,),
                tumor_class=cls,
                output_grid="model",
            )
            inputs = {"mask": _grid_mask(masks[i], affine)} if masks[i] is not None else {}
            (vol,) = gen.generate(params, inputs, lambda a, b: None)
            out.append(torch.from_numpy(np.asarray(vol.data, dtype=np.float32))[None])
            out_labels.append(k)
            done += 1
            if progress:
                progress(done, total)
    return torch.stack(out), np.asarray(out_labels)


def utility_protocol(
    entry: ModelEntry,
    data_dir,
    out_dir,
    per_class: int = 20,
    folds: int = 5,
    epochs: int = 10,
    seed: int = 0,
    modality: str = "flair",
    steps: int | None = None,
    device: str = "cpu",
    max_subjects: int | None = None,
    progress=None,
) -> dict:
    real, labels, segs, brain = real_on_model_grid(entry, data_dir, modality, max_subjects)
    synth, synth_labels = synthesise(entry, per_class, modality, segs, labels, brain, seed, steps, device, progress)
    result = run_utility(
        real, labels, synth, synth_labels, folds=folds, epochs=epochs, seed=seed, classes=tuple(entry.classes)
    )
    result["protocol"] |= {
        "model": entry.id,
        "trained_on": entry.trained_on,
        "modality": modality,
        "data": str(Path(data_dir)),
        "synthetic_per_class": per_class,
    }
    result["report"] = {k: str(v) for k, v in write_report(result, out_dir).items()}
    return result


def format_utility(result: dict) -> str:
    arms = result["arms"]
    lines = [
        f"downstream utility ({result['protocol'].get('model')}, {result['protocol'].get('folds', '?')} folds)",
        f"{'metric':10} {'real only':>17} {'real + synthetic':>17} {'difference':>11}",
    ]
    for m in result["metrics"]:
        a, b = arms["real_only"][m], arms["real_plus_synthetic"][m]
        lines.append(
            f"{m:10} {a['mean']:8.3f} ± {a['std']:5.3f}  {b['mean']:8.3f} ± {b['std']:5.3f} "
            f"{result['difference'][m]:+10.3f}"
        )
    return "\n".join(lines)
