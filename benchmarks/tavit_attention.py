"""TA-ViT on this machine: SDPA against explicit softmax attention at the paper's token count, slice throughput, and
one BraTS-sized volume end to end.

1. Attention over 30×30 = 900 tokens (the paper's 240×240 slices through an 8× encoder), width 256 in 8 heads, a
   batch of 16 slices: median time, the attention matrix's size computed (B·H·N²·4 bytes), and the peak RSS each
   kernel adds, measured in its own process (``ru_maxrss`` after the call minus before it; tracemalloc cannot see
   torch's allocations).
2. Slices per second through the whole network (segmenter + TA-ViT), demo and paper sizes, untrained.
3. One 240×240×155 volume at 1 mm (an ellipsoid "brain", T1 + FLAIR) through ``TAViTGenerator``, untrained
   checkpoints from ``create_untrained``; the goal is ≤ 30 s for the demo preset.

Run: `.venv/bin/python benchmarks/tavit_attention.py [--threads 2] [--skip-paper-volume]`. Prints tables.
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

from tumorsynth.models.nn.attention import attention, explicit_attention

BATCH, HEADS, TOKENS, WIDTH = 16, 8, 900, 256
KERNELS = {"sdpa": attention, "explicit": explicit_attention}


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def child(kernel: str, threads: int, repeats: int) -> None:
    """One kernel in a fresh process: its time, and the peak RSS it adds over q, k, v alone."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(BATCH, HEADS, TOKENS, WIDTH // HEADS, generator=g) for _ in range(3))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        out = KERNELS[kernel](q, k, v)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seconds = _median_time(lambda: KERNELS[kernel](q, k, v), repeats)
        ref = explicit_attention(q[:1], k[:1], v[:1])
    err = float((out[:1] - ref).abs().max())
    print(json.dumps({"seconds": seconds, "added_rss_mb": (peak - before) / 1024, "max_abs_err": err}))


def run_child(kernel: str, threads: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kernel, "--threads", str(threads), "--repeats", str(repeats)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def attention_table(threads: int, repeats: int) -> list[str]:
    matrix_mb = BATCH * HEADS * TOKENS * TOKENS * 4 / 2**20
    rows = {k: run_child(k, threads, repeats) for k in KERNELS}
    sdpa, explicit = rows["sdpa"], rows["explicit"]
    lines = [
        (
            f"attention, {BATCH} slices × {HEADS} heads × {TOKENS} tokens × {WIDTH // HEADS} per head, "
            f"{threads} threads; the (N, N) weights would take {matrix_mb:.1f} MB"
        ),
        f"{'kernel':10} {'time ms':>9} {'added RSS MB':>13} {'max |err|':>10}",
    ]
    for name, r in rows.items():
        lines.append(f"{name:10} {r['seconds'] * 1e3:9.1f} {r['added_rss_mb']:13.1f} {r['max_abs_err']:10.2e}")
    lines.append(
        f"explicit / sdpa: time {explicit['seconds'] / sdpa['seconds']:.2f}×, added RSS "
        f"{explicit['added_rss_mb'] / max(sdpa['added_rss_mb'], 0.1):.2f}×"
    )
    return lines


def throughput_table(repeats: int) -> list[str]:
    from tumorsynth.models.tavit.configs import build_network, model_config

    lines = [f"{'preset':8} {'slice':>8} {'tokens':>7} {'weights MB':>11} {'batch':>6} {'slices/s':>9}"]
    for preset, batch in (("demo", 16), ("paper", 4)):
        config = model_config(preset)
        net = build_network(config).eval()
        h, w = config["output"]["shape"]
        x = torch.randn(batch, 2, h, w)
        with torch.inference_mode():
            seconds = _median_time(lambda net=net, x=x: net(x), repeats)
        mb = sum(p.numel() for p in net.parameters()) * 4 / 2**20
        f = net.tavit.downsampling
        lines.append(
            f"{preset:8} {f'{h}×{w}':>8} {(h // f) * (w // f):7d} {mb:11.1f} {batch:6d} {batch / seconds:9.1f}"
        )
    return lines


class Upload:
    def __init__(self, data: np.ndarray, affine: np.ndarray):
        self.data, self.affine = data, affine

    @property
    def shape(self):
        return self.data.shape


def brats_sized_inputs() -> dict[str, Upload]:
    shape = (240, 240, 155)
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    brain = x**2 / 0.55 + y**2 / 0.7 + z**2 / 0.75 < 1
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    return {
        name: Upload(
            np.where(brain, 400 + 80 * rng.standard_normal(shape, dtype=np.float32), 0).astype(np.float32), affine
        )
        for name in ("t1", "flair")
    }


def volume_table(presets: list[str]) -> list[str]:
    from tumorsynth.models.base import GenerationParams
    from tumorsynth.models.tavit.configs import create_untrained
    from tumorsynth.models.tavit.runner import TAViTGenerator

    inputs = brats_sized_inputs()
    params = GenerationParams(num_samples=1, seed=0, sampler="direct", steps=1, modalities=("t1c",))
    brain_slices = int((inputs["t1"].data != 0).any(axis=(0, 1)).sum())
    lines = [
        f"one 240×240×155 volume (T1 + FLAIR, {brain_slices} brain slices) through TAViTGenerator, untrained",
        f"{'preset':8} {'load s':>7} {'generate s':>11} {'goal':>6}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            t = time.perf_counter()
            gen = TAViTGenerator(create_untrained(Path(tmp), preset=preset), "cpu")
            load = time.perf_counter() - t
            t = time.perf_counter()
            out = gen.generate(params, inputs, lambda done, total: None)
            seconds = time.perf_counter() - t
            assert out[0].data.shape == (240, 240, 155)
            lines.append(f"{preset:8} {load:7.1f} {seconds:11.1f} {'≤ 30 s' if seconds <= 30 else '> 30 s':>6}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-paper-volume", action="store_true", help="run the volume end to end for demo only")
    ap.add_argument("--child", choices=sorted(KERNELS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.threads, args.repeats)
        return
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {args.threads} threads\n")
    print("\n".join(attention_table(args.threads, args.repeats)), end="\n\n")
    print("\n".join(throughput_table(args.repeats)), end="\n\n")
    print("\n".join(volume_table(["demo"] if args.skip_paper_volume else ["demo", "paper"])))


if __name__ == "__main__":
    main()
