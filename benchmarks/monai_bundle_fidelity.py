"""The exported MONAI bundle beside the service, on one checkpoint and one mask: do they make the same kind of image?

Both sample the example mask (make run's, BraTS 2023 labels, 1 mm grid) on the model grid with the same checkpoint
and class, several seeds each: the service's runner (diffusers DDIM-50 and its default DPM-Solver++) and the bundle
(MONAI's LatentDiffusionInferer + DDIMScheduler, 50 steps, run by ``monai.bundle.run`` in a process where tumorsynth
cannot be imported). Printed side by side per contrast: mean z inside the tumour (WT) and outside it, the share of
near-zero voxels (|z| < 0.1: background), and the voxelwise r of each sampler's seed-mean image with the service
DDIM's seed-mean image. Seconds per sample include the bundle's process start.

Run: ``.venv/bin/python benchmarks/monai_bundle_fidelity.py [--model ldm/demo-phantom@1] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from tumorsynth.imaging.examples import affine_1mm, example_mask
from tumorsynth.imaging.labels import to_regions
from tumorsynth.imaging.nifti import read_volume, write_nifti
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.ldm.bundle import export_bundle
from tumorsynth.models.ldm.runner import LDMGenerator
from tumorsynth.models.registry import ModelRegistry
from tumorsynth.settings import REPO_ROOT


def service(entry, mask_bytes: bytes, sampler: str, steps: int, seed: int, cls: str) -> np.ndarray:
    gen = LDMGenerator(entry, "cpu")
    params = GenerationParams(
        num_samples=1, seed=seed, sampler=sampler, steps=steps, modalities=(), tumor_class=cls, output_grid="model"
    )
    vols = gen.generate(params, {"mask": read_volume(mask_bytes, "mask")}, lambda done, total: None)
    return np.stack([v.data for v in vols], -1)  # (X, Y, Z, 4)


def bundle(root: Path, mask: Path, out: Path, seed: int, cls: str) -> np.ndarray:
    args = {
        "run_id": "run",
        "config_file": str(root / "configs/inference.json"),
        "meta_file": str(root / "configs/metadata.json"),
        "bundle_root": str(root),
        "mask_path": str(mask),
        "output_dir": str(out),
        "seed": seed,
        "tumor_class": cls,
    }
    code = f"import sys; sys.modules['tumorsynth'] = None\nfrom monai.bundle import run\nrun(**{args!r})\n"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return nib.load(out / f"{mask.name.removesuffix('.nii.gz')}_synthetic.nii.gz").get_fdata().astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ldm/demo-phantom@1")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tumor-class", default="HGG")
    a = ap.parse_args()
    entry = ModelRegistry(REPO_ROOT / "checkpoints").get(a.model)
    tmp = Path(tempfile.mkdtemp())
    labels = example_mask()
    mask_bytes = write_nifti(labels.astype(np.float32), affine_1mm())
    (tmp / "mask.nii.gz").write_bytes(mask_bytes)
    export_bundle(entry, tmp / "bundle")
    runs: dict[str, list[np.ndarray]] = {"service ddim-50": [], "service dpm++-15": [], "bundle ddim-50 (MONAI)": []}
    secs = dict.fromkeys(runs, 0.0)
    for seed in range(a.seeds):
        for name, fn in (
            ("service ddim-50", lambda s: service(entry, mask_bytes, "ddim", 50, s, a.tumor_class)),
            ("service dpm++-15", lambda s: service(entry, mask_bytes, "dpm++", 15, s, a.tumor_class)),
            (
                "bundle ddim-50 (MONAI)",
                lambda s: bundle(tmp / "bundle", tmp / "mask.nii.gz", tmp / f"out{s}", s, a.tumor_class),
            ),
        ):
            t = time.perf_counter()
            runs[name].append(fn(seed))
            secs[name] += time.perf_counter() - t
    # the tumour on the model grid: the service's own mapping of the mask
    gen = LDMGenerator(entry, "cpu")
    from tumorsynth.imaging.geometry import fit_to_grid

    grid = fit_to_grid(labels.shape, affine_1mm(), gen.grid_shape, gen.fov_mm).to_grid(labels, order=0)
    wt = to_regions(grid)[0] > 0
    ref = np.mean(runs["service ddim-50"], 0)
    print(f"{a.model}, class {a.tumor_class}, {a.seeds} seeds, model grid {gen.grid_shape}, WT {int(wt.sum())} voxels")
    print(f"{'sampler':24} {'contrast':8} {'WT mean z':>10} {'rest mean z':>12} {'|z|<0.1':>8} {'r vs svc ddim':>14}")
    for name, vols in runs.items():
        mean = np.mean(vols, 0)
        for c, m in enumerate(entry.modalities):
            v = np.stack([x[..., c] for x in vols])
            r = np.corrcoef(mean[..., c].ravel(), ref[..., c].ravel())[0, 1]
            print(
                f"{name:24} {m:8} {v[:, wt].mean():10.3f} {v[:, ~wt].mean():12.3f} "
                f"{(np.abs(v) < 0.1).mean():8.3f} {r:14.3f}"
            )
        print(f"{name:24} {'s/sample':8} {secs[name] / a.seeds:10.1f}")


if __name__ == "__main__":
    main()
