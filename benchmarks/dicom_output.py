"""What ``"formats": ["nifti", "dicom"]`` costs a worker: one BraTS-grid sample (240×240×155, four contrasts and the
mask), written as the NIfTI files every job gets (the baseline) and as the DICOM archive on top (four MR series of
155 images and a SEG, zipped). Prints seconds and megabytes side by side; best of ``--repeat``.

Run: ``.venv/bin/python benchmarks/dicom_output.py [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from tumorsynth.imaging.dicom import Study
from tumorsynth.imaging.examples import example_mask
from tumorsynth.imaging.nifti import write_nifti
from tumorsynth.models.base import GeneratedVolume
from tumorsynth.workers.dicom_outputs import dicom_archive

SHAPE = (240, 240, 155)
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
MODALITIES = ("t1", "t1c", "t2", "flair")


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    labels = example_mask(SHAPE).astype(np.float32)
    brain = np.zeros(SHAPE, bool)
    brain[48:192, 30:210, 10:150] = True
    volumes = [
        GeneratedVolume(m, 0, np.where(brain, rng.normal(size=SHAPE), 0).astype(np.float32), AFFINE) for m in MODALITIES
    ]

    def nifti() -> int:
        return sum(len(write_nifti(v.data, v.affine)) for v in volumes) + len(write_nifti(labels, AFFINE))

    with tempfile.TemporaryDirectory() as tmp:

        def dicom() -> int:
            study = Study.new("1.2.826.0.1.3680043.8.498.", "job_bench", "ldm/bench@1", "0" * 64)
            archive = dicom_archive(
                [(v, v.data) for v in volumes], (labels, AFFINE, "brats2023"), study, Path(tmp) / "dicom.zip"
            )
            return archive.path.stat().st_size, archive.instances

        t_nifti, nifti_bytes = best(nifti, args.repeat)
        t_dicom, (zip_bytes, instances) = best(dicom, args.repeat)
    print(f"one sample {SHAPE}, {len(MODALITIES)} contrasts + mask, best of {args.repeat}")
    print(f"{'output':<34}{'seconds':>10}{'MB':>10}")
    print(f"{'NIfTI .nii.gz x5 (baseline)':<34}{t_nifti:>10.2f}{nifti_bytes / 1e6:>10.1f}")
    print(f"{f'DICOM zip ({instances} instances)':<34}{t_dicom:>10.2f}{zip_bytes / 1e6:>10.1f}")
    print(f"DICOM / NIfTI time: {t_dicom / t_nifti:.2f}x")


if __name__ == "__main__":
    main()
