"""StyleGAN2 images/s, ours against the previous path, side by side in one run (issue 15: ≥ 1,000 images/s at 256 px
on an H200, from 72.9).

Previous path (tests/support/stylegan2_previous.py, over the same weights): one forward pass per seed, every
modulated convolution a grouped convolution over per-sample weights, the FIR filter rebuilt at each resampling, fp32,
then to [0, 1] and rotated one image at a time on the host. Ours: ``sampler.sample_slices`` (one forward pass per
batch, unfused modulated convolutions, seeds still drawn one by one in the old order), fp32 and, where given, bf16
synthesis weights (``Generator.synthesis_to``; NHWC on CUDA), and the runner's ``to_voxels`` on the device.

Rows: modulated convolution fused vs unfused at batch 1 and at the batch size (the rule ``modulated_conv2d`` applies),
the seeded draws alone, sampling, sampling + post-processing (what a job waits for), previous → ours fp32 → ours bf16.
Before timing, a correctness check: ours fp32 equals the previous path within 1e-4 of the images' range (asserted),
and bf16 is reported against fp32 (asserted within 2 % RMS on a trained checkpoint: ``--model``).

On a GPU: ``python benchmarks/stylegan2_throughput.py`` (paper preset, 256 px, untrained weights: timing only, batch
64, bf16). On the CPU, the correctness run: ``python benchmarks/stylegan2_throughput.py --device cpu --preset demo
--model checkpoints/stylegan2/demo-phantom@1`` (and ``--preset paper --batch 4`` for the 256 px network); bf16 is
timed on a GPU only (``--bf16-on-cpu`` to time it here anyway: the CPU's bf16 convolutions say nothing of a GPU's).
``--clock cpu`` counts this process's CPU seconds, steadier than wall time on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import stylegan2_previous as previous  # noqa: E402
from tumorsynth.models.checkpoints import load_into  # noqa: E402
from tumorsynth.models.registry import entry_at  # noqa: E402
from tumorsynth.models.stylegan2.configs import build_network, create_untrained  # noqa: E402
from tumorsynth.models.stylegan2.generator import Generator  # noqa: E402
from tumorsynth.models.stylegan2.layers import (  # noqa: E402
    fuse_modulation,
    low_resolution_pays,
    modulated_conv2d,
    upsample2d,
    upsample_conv3x3,
)
from tumorsynth.models.stylegan2.runner import to_unit, to_voxels  # noqa: E402
from tumorsynth.models.stylegan2.sampler import sample_slices, seeded_inputs  # noqa: E402

CLOCK = time.perf_counter


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, device: torch.device, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t = CLOCK()
        fn()
        sync(device)
        best = min(best, CLOCK() - t)
    return best


def row(name: str, cells: list[float | None], unit: str) -> None:
    """Cells previous, ours fp32, ours bf16; the ratios are ours / previous (a rate) or previous / ours (seconds)."""
    base = cells[0]
    text = " ".join(f"{c:11.3f}" if c is not None else f"{'—':>11}" for c in cells)
    ratios = []
    for c in cells[1:]:
        if base and c:
            ratios.append(f"{(c / base if unit.endswith('/s') else base / c):7.2f}×")
    print(f"{name:50} {text}  {unit:9} {' '.join(ratios)}")


def previous_post(images: torch.Tensor) -> list[np.ndarray]:
    """The runner's post-processing before: [0, 1] on the host, then each image rotated and copied."""
    return [np.ascontiguousarray(np.rot90(s, k=-1)[..., None], dtype=np.float32) for s in to_unit(images)]


def load(args, device: torch.device, tmp: Path) -> tuple[str, Generator, Generator | None]:
    entry = entry_at(Path(args.model)) if args.model else create_untrained(tmp, preset=args.preset, seed=0)
    fp32 = load_into(build_network(entry.config), entry, device).requires_grad_(False)
    bf16 = None
    if device.type == "cuda" or args.bf16_on_cpu:
        bf16 = load_into(build_network(entry.config), entry, device).requires_grad_(False)
        bf16.synthesis_to(torch.bfloat16, channels_last=device.type == "cuda")
    return entry.id, fp32, bf16


def check(fp32: Generator, bf16: Generator | None, device: torch.device, trained: bool) -> None:
    seeds = list(range(8))
    with torch.inference_mode():
        before = previous.sample_slices(fp32, 1, seeds, 0.7, device=device)
        ours = sample_slices(fp32, 1, seeds, 0.7, device=device)
        scale = float(before.abs().max())
        worst = float((ours - before).abs().max())
        assert worst <= 1e-4 * scale, (worst, scale)
        print(f"check: ours fp32 vs previous, 8 seeds: max |Δ| {worst:.2e} (images up to {scale:.2f}): equal")
        post_a, post_b = previous_post(ours), to_voxels(ours)
        assert all(np.array_equal(a, b) for a, b in zip(post_a, post_b))
        print("check: post-processing on the device equals the previous per-image rotation, bit for bit")
        if bf16 is not None:
            a, b = to_unit(ours), to_unit(sample_slices(bf16, 1, seeds, 0.7, device=device))
            rel = float(np.sqrt(np.mean((a - b) ** 2) / np.mean(a**2)))
            print(
                f"check: bf16 vs fp32 served [0, 1] slices: max |Δ| {np.abs(a - b).max():.3f}, RMS Δ "
                f"{100 * rel:.2f} % of the slices' RMS" + ("" if trained else " (untrained weights: indicative)")
            )
            if trained:
                assert rel < 0.02, rel


def modconv_rows(net: Generator, batch: int, device: torch.device, repeat: int) -> None:
    """A wide layer at a low resolution, the top up-sampling layer and the top layer, in seconds: the previous code
    (grouped, after ``upsample2d``), ours fused and unfused, and which of the two ``fuse_modulation`` picks."""
    print(f"{'modulated conv (fp32), seconds':50} {'previous':>11} {'fused':>11} {'unfused':>11}  picks")
    layers = net.noise_layers()
    for layer in (layers[len(layers) // 2], layers[-2], layers[-1]):
        w = layer.weight.float()
        o, i = w.shape[:2]
        r = layer.resolution // 2 if layer.up else layer.resolution
        for b in sorted({1, batch}):
            x = torch.randn(b, i, r, r, device=device)
            s = torch.rand(b, i, device=device) + 0.5
            old = (
                (lambda: previous.modulated_conv2d(previous.upsample2d(x), w, s, padding=1))
                if layer.up
                else (lambda: previous.modulated_conv2d(x, w, s, padding=1))
            )
            with torch.inference_mode():
                times = [best_of(old, device, repeat)] + [
                    best_of(lambda f=f: modulated_conv2d(x, w, s, padding=1, fused=f, up=layer.up), device, repeat)
                    for f in (True, False)
                ]
            pick = "fused" if fuse_modulation(x, w) else "unfused"
            what = f"{i}→{o} {'up ' if layer.up else ''}@ {layer.resolution} px, batch {b}"
            print(f"{what:50} {times[0]:11.5f} {times[1]:11.5f} {times[2]:11.5f}  {pick}")


def compiled_rows(net: Generator, seeds: list[int], device: torch.device, repeat: int) -> None:
    """Eager against ``torch.compile`` (elementwise chains fused; CUDA graphs left out: the draws are per seed)."""
    eager = best_of(lambda: sample_slices(net, 0, seeds, device=device), device, repeat)
    compiled = torch.compile(net, mode="max-autotune-no-cudagraphs", dynamic=False)
    t = time.perf_counter()
    sample_slices(compiled, 0, seeds, device=device)  # the compiled module forwards attributes
    warm = time.perf_counter() - t
    fast = best_of(lambda: sample_slices(compiled, 0, seeds, device=device), device, repeat)
    row(f"sampling: eager → compiled (warm-up {warm:.0f} s)", [len(seeds) / eager, len(seeds) / fast, None], "images/s")


def up_rows(net: Generator, batch: int, device: torch.device, repeat: int) -> None:
    """Every up-sampling layer's 3×3 convolution (unmodulated): up-sample then convolve (the previous order) against
    the convolution at the low resolution with the border corrected, and which ``up_conv3x3`` runs."""
    print(f"\n{'up-sampling 3×3 conv (fp32), seconds':50} {'up, conv':>11} {'low-res':>11}  picks")
    for layer in net.noise_layers():
        if not layer.up:
            continue
        w = layer.weight.float()
        o, i = w.shape[:2]
        x = torch.randn(batch, i, layer.resolution // 2, layer.resolution // 2, device=device)
        with torch.inference_mode():
            before = best_of(lambda: F.conv2d(upsample2d(x), w, padding=1), device, repeat)
            low = best_of(lambda: upsample_conv3x3(x, w), device, repeat)
            picks = "low-res" if low_resolution_pays(x) else "up, conv"
        print(f"{f'{i}→{o} from {x.shape[-1]} px, batch {batch}':50} {before:11.5f} {low:11.5f}  {picks}")


def main() -> None:
    global CLOCK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default=None, help="untrained preset (default: paper on CUDA, demo on CPU)")
    ap.add_argument("--model", default=None, help="a checkpoint folder instead of an untrained preset")
    ap.add_argument("--batch", type=int, default=None, help="images per job (default 64 on CUDA, 16 on CPU)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per timing, best kept (default 5 CUDA, 2 CPU)")
    ap.add_argument(
        "--previous-images",
        type=int,
        default=None,
        help="images for the previous path's timing (default: the batch; it is per image anyway)",
    )
    ap.add_argument("--bf16-on-cpu", action="store_true", help="also build and time bf16 on the CPU")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile of ours (bf16 on CUDA) on the batch's fixed shapes",
    )
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.preset = args.preset or ("paper" if cuda else "demo")
    batch, repeat = args.batch or (64 if cuda else 16), args.repeat or (5 if cuda else 2)
    n_prev = args.previous_images or batch
    name, fp32, bf16 = load(args, device, Path(tempfile.mkdtemp(prefix="ts-sg2-")))
    where = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} CPU threads"
    print(f"{name} ({fp32.resolution} px) on {device} ({where}), batch {batch}, best of {repeat}, {args.clock} clock")
    check(fp32, bf16, device, trained=args.model is not None)

    print()
    modconv_rows(fp32, batch, device, repeat)
    up_rows(fp32, batch, device, repeat)
    print(f"\n{'':50} {'previous':>11} {'ours fp32':>11} {'ours bf16':>11}  {'unit':9} ratios to previous")
    seeds = list(range(1000, 1000 + batch))
    nets = [fp32, bf16]
    with torch.inference_mode():
        previous.sample_slices(fp32, 0, seeds[:1], device=device)  # warm-up: kernels, caches
        for net in nets:
            if net is not None:
                sample_slices(net, 0, seeds, device=device)
        t_draw = best_of(lambda: seeded_inputs(fp32, seeds, "random", device), device, repeat)
        row(f"seeded z + noise draws, {batch} seeds", [None, t_draw, None], "s")
        t_prev = best_of(lambda: previous.sample_slices(fp32, 0, seeds[:n_prev], device=device), device, repeat)
        t_ours = [
            best_of(lambda n=n: sample_slices(n, 0, seeds, device=device), device, repeat) if n else None for n in nets
        ]
        row("sampling", [n_prev / t_prev, *[batch / t if t else None for t in t_ours]], "images/s")
        t_prev_job = best_of(
            lambda: previous_post(previous.sample_slices(fp32, 0, seeds[:n_prev], device=device)), device, repeat
        )
        t_job = [
            best_of(lambda n=n: to_voxels(sample_slices(n, 0, seeds, device=device)), device, repeat) if n else None
            for n in nets
        ]
        row(
            "sampling + slices to host voxels",
            [n_prev / t_prev_job, *[batch / t if t else None for t in t_job]],
            "images/s",
        )
        if args.compile:
            compiled_rows(bf16 or fp32, seeds, device, repeat)
    if cuda:
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
