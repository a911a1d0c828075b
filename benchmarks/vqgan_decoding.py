"""VQGAN token decoding side by side on one checkpoint: MaskGIT (parallel, 4–16 steps) vs raster-order AR with a
KV cache vs AR without a cache (as the paper's public code decodes: the whole prefix re-run for every token).

Same weights, same class, same seeds, one run. Quality: MS-SSIM between samples (diversity; MONAI) and MMD against
real phantom ROIs of that class (MONAI). Run: `.venv/bin/python benchmarks/vqgan_decoding.py [--model ...]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tumorsynth.models.registry import ModelRegistry
from tumorsynth.models.vqgan.runner import VQGANGenerator
from tumorsynth.models.vqgan.sampler import ar_decode, guided, maskgit_decode
from tumorsynth.settings import get_settings


def real_rois(entry, n: int, workdir: Path, tumor_class: str) -> torch.Tensor:
    from tumorsynth.data.brats import find_subjects
    from tumorsynth.data.phantoms import generate_phantoms
    from tumorsynth.data.roi import load_rois

    if not Path(workdir).is_dir() or not find_subjects(workdir):
        generate_phantoms(workdir, 2 * n, seed=9999, workers=2)
    rois = load_rois(workdir, entry.classes, entry.output_shape, entry.output_spacing, entry.modalities)
    keep = [i for i, c in enumerate(rois.classes.tolist()) if c == entry.classes.index(tumor_class) + 1][:n]
    return rois.rois[keep]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vqgan/demo-phantom@1")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tumor-class", default="HGG")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ts-bench-phantoms")
    args = ap.parse_args()
    torch.set_num_threads(2)
    entry = ModelRegistry(get_settings().model_dir).get(args.model)
    gen = VQGANGenerator(entry, "cpu")
    net = gen.network
    label = entry.classes.index(args.tumor_class) + 1
    n = args.samples
    calls = {"n": 0}
    for m in (net.maskgit, net.ar):  # one pass = one run through the layer stack (full, prefix or one cached token)
        m.head.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))

    def run(name, fn):
        tokens, seconds, passes = [], 0.0, 0
        for i in range(n):  # one ROI at a time: seconds per ROI, as a user waiting for one sample sees it
            g = [torch.Generator().manual_seed(100 + i)]
            labels = torch.tensor([label])
            calls["n"] = 0
            t0 = time.perf_counter()
            with torch.inference_mode():
                tokens.append(fn(labels, g).tokens)
            seconds += time.perf_counter() - t0
            passes += calls["n"]
        with torch.inference_mode():
            images = torch.cat([net.decode_tokens(t) for t in tokens]).clamp(-1, 1).float()
        return {"method": name, "s_per_roi": seconds / n, "passes": passes / n, "images": images}

    reals = real_rois(entry, n, args.workdir, args.tumor_class)  # first: it may have to make the phantoms
    rows = []
    for steps in (4, 8, 16):
        rows.append(
            run(
                f"maskgit-{steps}",
                lambda labels, g, s=steps: maskgit_decode(
                    guided(net.maskgit, labels, 0.0), net.num_tokens, net.mask_id, s, g, "cpu", None
                ),
            )
        )
    rows.append(run("ar + KV cache", lambda labels, g: ar_decode(net.ar, labels, g, None, use_cache=True)))
    rows.append(run("ar, no cache (reference)", lambda labels, g: ar_decode(net.ar, labels, g, None, use_cache=False)))
    from monai.metrics import MMDMetric, MultiScaleSSIMMetric

    pool = lambda x: torch.nn.functional.avg_pool3d(x.float(), 2)
    for r in rows:
        imgs = r["images"]
        ms = MultiScaleSSIMMetric(spatial_dims=3, data_range=2.0, kernel_size=3, weights=(0.5, 0.5))
        pairs = [float(ms(imgs[a : a + 1], imgs[b : b + 1]).mean()) for a in range(n) for b in range(a + 1, n)]
        r["ms_ssim"] = float(np.mean(pairs))
        k = min(len(reals), len(imgs))
        r["mmd"] = float(MMDMetric(y_mapping=pool)(imgs[:k], reals[:k])) if k >= 2 else float("nan")
    nocache, cache = rows[-1], rows[-2]
    print(
        f"\nVQGAN decoding on {entry.id} (trained={entry.trained}), class {args.tumor_class}, {n} ROIs one at a "
        f"time, {net.num_tokens} tokens, CPU ({torch.get_num_threads()} threads)"
    )
    print(f"{'method':26} {'s/ROI':>7} {'passes':>7} {'MS-SSIM':>8} {'MMD':>9} {'vs no-cache':>11} {'vs KV':>7}")
    for r in rows:
        print(
            f"{r['method']:26} {r['s_per_roi']:7.2f} {r['passes']:7.0f} {r['ms_ssim']:8.3f} {r['mmd']:9.4f} "
            f"{nocache['s_per_roi'] / r['s_per_roi']:10.1f}× {cache['s_per_roi'] / r['s_per_roi']:6.1f}×"
        )


if __name__ == "__main__":
    main()
