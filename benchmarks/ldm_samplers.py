"""LDM samplers side by side on one checkpoint: the paper's DDPM-1000, MONAI's LatentDiffusionInferer with DDIM-50
(the default of MONAI's generative bundles), and our default fast sampler (DPM-Solver++ 2M through diffusers).

Each method runs in its own process (so peak RSS is its own: the parent prepares the masks and hands them over as a
file, so no child's peak is set by loading phantoms) on the same unseen phantom masks, one volume at a time, same
seeds. Realism is MONAI's MMD between the generated volumes and the real (phantom) volumes of those masks.

Run: `.venv/bin/python benchmarks/ldm_samplers.py [--model ldm/demo-phantom@1] [--masks 4]`. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tumorsynth.models.registry import ModelRegistry
from tumorsynth.settings import get_settings

METHODS = {
    "ddpm-1000 (paper)": ("ours", "ddpm", 1000),
    "MONAI LDM inferer, DDIM-50": ("monai", "ddim", 50),
    "ours, dpm++ 20": ("ours", "dpm++", 20),
    "ours, dpm++ default": ("ours", "dpm++", None),
    "ours, dpm++ 10": ("ours", "dpm++", 10),
}


def masks_and_reals(entry, n: int, workdir: Path):
    """Unseen phantoms (a seed the demo never trained on) → labels and real images on the model grid."""
    from tumorsynth.data.brats import find_subjects
    from tumorsynth.data.phantoms import generate_phantoms
    from tumorsynth.data.subjects import prepare_subject

    if not Path(workdir).is_dir() or not find_subjects(workdir):
        generate_phantoms(workdir, n, seed=9999, workers=2)
    grid, fov = tuple(entry.output_shape), tuple(entry.config["fov_mm"])
    out = [prepare_subject(s, grid, fov, tuple(entry.modalities)) for s in find_subjects(workdir)[:n]]
    return [o[1] for o in out], torch.stack([torch.from_numpy(o[0]) for o in out])


def run_method(model_id: str, method: str, n: int, workdir: Path) -> dict:
    from tumorsynth.imaging.labels import to_regions
    from tumorsynth.models.ldm.runner import LDMGenerator
    from tumorsynth.models.ldm.sampler import reverse_process
    from tumorsynth.models.ldm.schedulers import make_scheduler

    torch.set_num_threads(2)
    entry = ModelRegistry(get_settings().model_dir).get(model_id)
    kind, sampler, steps = METHODS[method]
    steps = steps or entry.sampler(sampler).default_steps
    labels = list(np.load(Path(workdir) / "labels.npy"))[:n]
    gen = LDMGenerator(entry, "cpu")
    net = gen.network
    calls = {"n": 0}
    net.unet.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    latent_shape = (1, net.latent_channels, *net.latent_shape(entry.output_shape))
    volumes, seconds = [], []
    for i, lab in enumerate(labels):
        regions = torch.from_numpy(to_regions(lab, "brats2023"))[None]
        cond = net.condition(regions)
        g = torch.Generator().manual_seed(100 + i)
        t0 = time.perf_counter()
        with torch.inference_mode():
            if kind == "ours":
                sched = make_scheduler(sampler, steps, entry.config["schedule"])
                y = torch.zeros(1, dtype=torch.long)
                z = reverse_process(lambda z, t: net.denoise(z, t, cond, y), sched, latent_shape, [g], "cpu").latents
                img = net.decode(z, regions, y)
            else:
                img = monai_reference(net, entry, cond, regions, latent_shape, g, steps)
        seconds.append(time.perf_counter() - t0)
        volumes.append(img[0].float())
    return {
        "method": method,
        "steps": steps,
        "seconds_per_volume": float(np.mean(seconds)),
        "unet_evals_per_volume": calls["n"] / len(labels),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "volumes": torch.stack(volumes).tolist(),
    }


def monai_reference(net, entry, cond, regions, latent_shape, generator, steps):
    """MONAI's own sampling loop: LatentDiffusionInferer + its DDIMScheduler, mask concatenated ("concat" mode)."""
    from monai.inferers import LatentDiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    s = entry.config["schedule"]
    scheduler = DDIMScheduler(
        num_train_timesteps=s.get("num_train_timesteps", 1000),
        schedule="linear_beta",
        beta_start=s.get("beta_start", 1e-4),
        beta_end=s.get("beta_end", 0.02),
        clip_sample=False,
    )
    scheduler.set_timesteps(steps)

    class Unconditional(torch.nn.Module):  # MONAI's inferer passes no class labels; ours takes index 0 = "unknown"
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, x, timesteps, context=None, class_labels=None, **kw):
            labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
            return self.unet(x, timesteps=timesteps, class_labels=labels)

    inferer = LatentDiffusionInferer(scheduler, scale_factor=float(net.scale_factor))
    noise = torch.randn(latent_shape, generator=generator, device=cond.device)
    return inferer.sample(
        noise,
        autoencoder_model=net.autoencoder,
        diffusion_model=Unconditional(net.unet),
        scheduler=scheduler,
        conditioning=cond,
        mode="concat",
        verbose=False,
        # a SPADE decoder's label map (regions, no class); MONAI's inferer passes it to a SPADEAutoencoderKL only
        seg=net.decoder_labels(regions, torch.zeros(1, dtype=torch.long)),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ldm/demo-phantom@1")
    ap.add_argument("--masks", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ts-bench-phantoms")
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        print(json.dumps(run_method(args.model, args.method, args.masks, args.workdir)))
        return
    from monai.metrics import MMDMetric

    entry = ModelRegistry(get_settings().model_dir).get(args.model)
    labels, reals = masks_and_reals(entry, args.masks, args.workdir)
    np.save(Path(args.workdir) / "labels.npy", np.stack(labels))
    rows = []
    for method in METHODS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--masks",
                str(args.masks),
                "--workdir",
                str(args.workdir),
                "--method",
                method,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        fake = torch.tensor(row.pop("volumes"))
        pool = lambda x: torch.nn.functional.avg_pool3d(x.float(), 2)
        row["mmd"] = float(
            np.mean(
                [
                    float(MMDMetric(y_mapping=pool)(fake[:, c : c + 1], reals[:, c : c + 1]))
                    for c in range(reals.shape[1])
                ]
            )
        )
        rows.append(row)
    ddpm, ref = rows[0], rows[1]
    default = entry.sampler("dpm++").default_steps
    print(
        f"\nLDM samplers on {entry.id} (trained={entry.trained}), {args.masks} unseen phantom masks, one volume "
        f"at a time, CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"{'method':30} {'steps':>5} {'s/volume':>9} {'UNet evals':>10} {'peak RSS MB':>11} {'MMD':>9} "
        f"{'vs DDPM':>8} {'vs MONAI':>9}"
    )
    for r in rows:
        print(
            f"{r['method']:30} {r['steps']:5d} {r['seconds_per_volume']:9.2f} {r['unet_evals_per_volume']:10.0f} "
            f"{r['peak_rss_mb']:11.0f} {r['mmd']:9.4f} {ddpm['seconds_per_volume'] / r['seconds_per_volume']:7.1f}× "
            f"{ref['seconds_per_volume'] / r['seconds_per_volume']:8.2f}×"
        )
    ours = next(r for r in rows if r["method"] == "ours, dpm++ default")
    print(
        f"\nours = dpm++ at the checkpoint's default of {default} steps; its MMD relative to the MONAI reference: "
        f"{ours['mmd'] / ref['mmd']:.2f} (target: within 10%)"
    )


if __name__ == "__main__":
    main()
