"""The typical brain mean and standard deviation per contrast of a training set, for the ``scanner`` scale.

Trainers record them in the checkpoint (``config.json`` ``intensity.scanner``) so a job can ask for its outputs on a
scanner-like scale (``imaging/intensity.py``). BraTS volumes are skull-stripped: the brain is every voxel above 0.
Each figure is the median over subjects of that subject's brain mean (or standard deviation), so one odd scan does
not move it.

``python -m tumorsynth.training.intensity_stats DATA_DIR`` prints them as JSON (how the shipped demo checkpoints'
figures were measured).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import numpy as np

from ..data.brats import MODALITIES, Subject, find_subjects, load_nifti


def subject_stats(subject: Subject, modality: str) -> tuple[float, float] | None:
    data = np.asarray(load_nifti(subject.paths[modality]).dataobj, dtype=np.float32)
    brain = data[data > 0]
    return (float(brain.mean()), float(brain.std())) if brain.size else None


def scanner_stats(subjects: Sequence[Subject], modalities: Sequence[str] = MODALITIES) -> dict:
    """``{contrast: {"mean", "std", "subjects"}}`` over the subjects that have the contrast."""
    out = {}
    for m in modalities:
        rows = [s for s in (subject_stats(sub, m) for sub in subjects if m in sub.paths) if s is not None]
        if rows:
            means, stds = np.array(rows).T
            out[m] = {
                "mean": round(float(np.median(means)), 2),
                "std": round(float(np.median(stds)), 2),
                "subjects": len(rows),
            }
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m tumorsynth.training.intensity_stats DATA_DIR")
    print(json.dumps(scanner_stats(find_subjects(argv[0])), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])


def record_scanner_stats(config: dict, data_dir, subject_ids, modalities: Sequence[str]) -> dict:
    """The trainers' write path: ``config["intensity"]["scanner"]`` from the training subjects' own volumes."""
    wanted = set(subject_ids)
    subjects = [s for s in find_subjects(data_dir) if s.id in wanted]
    config.setdefault("intensity", {})["scanner"] = scanner_stats(subjects, modalities)
    return config
