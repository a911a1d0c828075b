"""One LDM job end to end, per stage, ours against the previous path, side by side (issue 15).

Previous path (the code before issue 15, rebuilt here from the same parts): labels → model grid and outputs → mask
grid with scipy on the host, fp32 weights, one volume after another gzip-compressed by zlib at level 6 and stored.
Ours: the runner as it serves (``LDMGenerator.prepare/sample_batch/finish``: torch grid mapping on the job's device,
bf16 weights on CUDA), ISA-L gzip level 1 by the worker's writer threads, and cross-job batching
(``workers.batching.Batcher``) for jobs/s.

Stages: UNet step fp32 vs bf16 (batch 1 and the batch size), sampling, grid mapping, encoding, upload (a filesystem
store in a temporary folder), whole job, jobs/s without and with batching; on CUDA also MONAI's
LatentDiffusionInferer DDIM-50 against our sampler in the same run, torch.compile of the UNet (``--compile``), and
the SDPA kernel the bf16 UNet runs, asserted to be flash attention (read from the profiler's op names).

On a GPU: ``python benchmarks/gpu_job.py`` (paper preset, untrained weights: timing only; dpm++ 15; 8 jobs).
On the CPU it is a correctness run with the demo checkpoint: it checks that both paths agree, that the outputs
read back with nibabel, and that batched jobs match unbatched ones; its timings are this machine's
(``--clock cpu`` counts this process's CPU seconds, steadier than wall time on a machine shared with other work).
Input: examples/masks/example_brats2023_mask.nii.gz (240×240×155, BraTS 2023 labels), as a job reads it.
Then TA-ViT (benchmarks/gpu_job_tavit.py): one 240×240×155 volume, previous path against ours; then StyleGAN2
(benchmarks/stylegan2_throughput.py, its own process: images/s previous vs ours fp32 vs bf16, paper preset on CUDA);
``--family`` picks the sections (default all). tests/test_gpu_job_benchmark.py runs it on the CPU as a correctness
run (its checks assert; its timings are not tested).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tumorsynth.imaging.geometry import fit_to_grid  # noqa: E402
from tumorsynth.imaging.labels import to_brats2023, to_regions  # noqa: E402
from tumorsynth.imaging.nifti import read_volume, write_nifti  # noqa: E402
from tumorsynth.models.base import GenerationParams  # noqa: E402
from tumorsynth.models.ldm.runner import DECODE_BATCH, Z_LIMIT, LDMGenerator  # noqa: E402
from tumorsynth.models.ldm.sampler import reverse_process  # noqa: E402
from tumorsynth.storage.local import LocalStore  # noqa: E402
from tumorsynth.workers.batching import Batcher  # noqa: E402

MASK = ROOT / "examples/masks/example_brats2023_mask.nii.gz"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter  # --clock cpu: time.process_time, this process's CPU seconds (all its threads)


def timed(fn, device, repeat: int = 1):
    """(best seconds of ``repeat`` runs, last result); CUDA work is waited for."""
    best, out = float("inf"), None
    for _ in range(repeat):
        sync(device)
        t = CLOCK()
        out = fn()
        sync(device)
        best = min(best, CLOCK() - t)
    return best, out


def paired(old, new, device, repeat: int):
    """``timed`` of both, runs alternating, so a machine whose load swings (a shared CPU) weighs on both alike."""
    best = [(float("inf"), None), (float("inf"), None)]
    for _ in range(repeat):
        for k, fn in enumerate((old, new)):
            t, out = timed(fn, device)
            best[k] = (min(t, best[k][0]), out)
    return best


# ---- the previous path ------------------------------------------------------------------------------------------


def prev_prepare(gen: LDMGenerator, mask):
    labels = np.rint(np.asarray(mask.data)).astype(np.int16)
    mapping = fit_to_grid(labels.shape, mask.affine, gen.grid_shape, gen.fov_mm)
    grid_labels = mapping.to_grid(labels, order=0)  # scipy, on the host
    regions = torch.from_numpy(to_regions(grid_labels))[None].to(gen.device)
    return mapping, (gen.network.condition(regions), regions)


def prev_sample(gen: LDMGenerator, cond_regions, params) -> np.ndarray:
    net, n = gen.network, params.num_samples
    cond, regions = cond_regions
    cond = cond.expand(n, -1, -1, -1, -1)
    cls = torch.full((n,), gen._class_index(params.tumor_class), device=gen.device, dtype=torch.long)
    shape = (n, net.latent_channels, *net.latent_shape(gen.grid_shape))
    gens = [torch.Generator(gen.device).manual_seed(params.seed + i) for i in range(n)]
    z = reverse_process(
        lambda z, t: net.denoise(z, t, cond, cls), gen._scheduler(params), shape, gens, gen.device
    ).latents
    regions = regions.to(z.dtype).expand(n, -1, -1, -1, -1)
    parts = zip(z.split(DECODE_BATCH), regions.split(DECODE_BATCH), cls.split(DECODE_BATCH))
    return torch.cat([net.decode(*p) for p in parts]).clamp_(-Z_LIMIT, Z_LIMIT).float().cpu().numpy()


def prev_from_grid(mapping, images: np.ndarray) -> list[np.ndarray]:
    return [
        mapping.from_grid(images[i, c], order=1).astype(np.float32)
        for i in range(images.shape[0])
        for c in range(images.shape[1])
    ]


def prev_encode(volumes, affine) -> list[bytes]:
    out = []
    for v in volumes:  # write_nifti's header, zlib level 6 as before
        raw = gzip.decompress(write_nifti(v, affine))
        out.append(gzip.compress(raw, 6, mtime=0))
    return out


# ---- ours ---------------------------------------------------------------------------------------------------------


def our_encode(volumes, affine, pool: ThreadPoolExecutor) -> list[bytes]:
    return list(pool.map(lambda v: write_nifti(v, affine), volumes))


def store_all(store: LocalStore, prefix: str, blobs: list[bytes], pool: ThreadPoolExecutor | None) -> None:
    put = lambda kb: store.put_bytes(f"{prefix}/{kb[0]}.nii.gz", kb[1], "application/gzip")
    list(pool.map(put, enumerate(blobs))) if pool else [put(kb) for kb in enumerate(blobs)]


def job_outputs(volumes: list[np.ndarray], mask) -> list[np.ndarray]:
    """What the worker stores: the contrasts and the mask (BraTS 2023 labels, float32)."""
    return [*volumes, to_brats2023(np.asarray(mask.data), "brats2023").astype(np.float32)]


def prev_job(gen, mask, store, prefix):
    mapping, cond = prev_prepare(gen, mask)
    vols = job_outputs(prev_from_grid(mapping, prev_sample(gen, cond, PARAMS)), mask)
    store_all(store, prefix, prev_encode(vols, mask.affine), None)
    return vols


def our_job(gen, mask, store, prefix, pool, batcher: Batcher | None = None, params=None):
    params = params or PARAMS
    job = gen.prepare(params, {"mask": mask})
    if batcher is None:
        images = gen.sample_batch([job], [lambda d, t: None])[0]
    else:
        images = batcher.sample(gen, job, params.num_samples, lambda d, t: None)
    vols = job_outputs([v.data for v in gen.finish(job, images)], mask)
    store_all(store, prefix, our_encode(vols, mask.affine, pool), pool)
    return vols


# ---- the run ------------------------------------------------------------------------------------------------------

PARAMS: GenerationParams  # set in main()


def unet_step(gen: LDMGenerator, batch: int, device, repeat: int) -> float:
    net = gen.network
    dtype = next(net.parameters()).dtype
    z = torch.randn(batch, net.latent_channels, *net.latent_shape(gen.grid_shape), device=device, dtype=dtype)
    cond = torch.rand(batch, 3, *z.shape[2:], device=device, dtype=dtype)
    t, cls = torch.full((batch,), 500, device=device), torch.zeros(batch, dtype=torch.long, device=device)
    with torch.inference_mode():
        net.denoise(z, t, cond, cls)  # warm-up
        return timed(lambda: net.denoise(z, t, cond, cls), device, max(10, 5 * repeat))[0]


def sdpa_ops(gen: LDMGenerator, device) -> set[str]:
    """The SDPA implementations one UNet call dispatches to, by the profiler's op names."""
    net = gen.network
    dtype = next(net.parameters()).dtype
    z = torch.randn(1, net.latent_channels, *net.latent_shape(gen.grid_shape), device=device, dtype=dtype)
    cond = torch.rand(1, 3, *z.shape[2:], device=device, dtype=dtype)
    with torch.inference_mode(), torch.profiler.profile() as prof:
        net.denoise(z, torch.full((1,), 500, device=device), cond, torch.zeros(1, dtype=torch.long, device=device))
    return {e.name for e in prof.events() if "scaled_dot_product" in e.name and e.name.startswith("aten::_")}


def row(name: str, before: float | None, ours: float, unit: str = "s") -> None:
    """``ratio``: how many times faster ours is (seconds: before / ours; a rate: ours / before)."""
    speedup = (ours / before if unit.endswith("/s") else before / ours) if before else None
    ratio = f"{speedup:8.2f}×" if speedup else f"{'':>9}"
    b = f"{before:10.3f}" if before is not None else f"{'—':>10}"
    print(f"{name:52} {b} {ours:10.3f} {ratio}  {unit}")


def main() -> None:
    global PARAMS, CLOCK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default=None, help="checkpoint folder; default: paper preset on CUDA, demo on CPU")
    ap.add_argument("--sampler", default="dpm++")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--jobs", type=int, default=None, help="jobs for jobs/s (default 8 on CUDA, 3 on CPU)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per timing, best kept (default 3 CUDA, 1 CPU)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="ours (auto: bf16 on CUDA)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd UNet steps (CUDA)")
    ap.add_argument("--no-monai", action="store_true", help="skip MONAI's LatentDiffusionInferer DDIM-50")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: CPU seconds of this process, for a CPU run on a machine shared with other work "
        "(threads' work adds up, so it shows work saved, not parallelism)",
    )
    ap.add_argument(
        "--family", choices=("all", "ldm", "tavit", "stylegan2"), default="all", help="which families' sections"
    )
    ap.add_argument("--tavit-model", default=None, help="TA-ViT checkpoint folder; default: paper on CUDA, demo on CPU")
    args = ap.parse_args()
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    repeat, n_jobs = args.repeat or (3 if cuda else 1), args.jobs or (8 if cuda else 3)
    if args.family == "tavit":
        return tavit(device, args, repeat)
    if args.family == "stylegan2":
        return stylegan2(args, repeat)
    tmp = Path(tempfile.mkdtemp(prefix="ts-gpu-job-"))
    entry = load_entry(args.model, cuda, tmp)
    PARAMS = GenerationParams(
        num_samples=1,
        seed=7,
        sampler=args.sampler,
        steps=args.steps,
        modalities=(),
        tumor_class=entry.classes[-1] if entry.classes else None,
    )
    mask = read_volume(MASK.read_bytes())
    fp32 = LDMGenerator(entry, device, precision="fp32")
    ours = LDMGenerator(entry, device, precision=args.precision)
    store = LocalStore(tmp / "store", base_url="http://bench", signing_key=b"bench")
    pool = ThreadPoolExecutor(4, thread_name_prefix="writer")
    where = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} CPU threads"
    print(
        f"{entry.id} on {device} ({where}), grid {entry.output_shape}, mask {mask.shape}, {args.sampler} "
        f"{args.steps} steps, {len(entry.modalities)} contrasts + mask written; ours in {ours.dtype}"
    )

    # correctness first: our path against the previous one, read back with nibabel
    with torch.inference_mode():
        before = prev_job(fp32, mask, store, "check/prev")
        after = our_job(ours, mask, store, "check/ours", pool)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(before, after))
    for a, b in zip(before, after):
        assert a.shape == b.shape == mask.shape
    back = read_volume(store.get_bytes("check/ours/0.nii.gz"))
    assert back.data.dtype == np.float32 and np.array_equal(back.data, after[0])
    if ours.dtype == torch.float32:  # the same numbers but for the grid mapping's float32 coordinates
        assert worst < 1e-3, worst
        print(f"check: previous and our outputs agree within 1e-3 z (max {worst:.2e}); ours read back bit-exact")
    else:  # measured, not asserted: with untrained weights the size of bf16's deviation says little
        rms = np.sqrt(np.mean([np.mean((a - b) ** 2) for a, b in zip(before[:-1], after[:-1])]))
        ref = np.sqrt(np.mean([np.mean(a**2) for a in before[:-1]]))
        print(
            f"check: {ours.dtype} vs fp32 outputs: max |Δ| {worst:.3f} z, RMS Δ {100 * rms / max(ref, 1e-12):.2f} % "
            "of the outputs' RMS; ours read back bit-exact"
        )

    print(f"\n{'stage (' + args.clock + ' clock)':52} {'previous':>10} {'ours':>10} {'ratio':>9}")
    dt = str(ours.dtype).removeprefix("torch.")
    steps = [(f"UNet step, batch 1 (fp32 → {dt})", 1), (f"UNet step, batch {n_jobs}", n_jobs)]
    for name, b in steps:  # where ours is fp32 too (the CPU) there is nothing to compare: ours alone
        before = unet_step(fp32, b, device, repeat) if ours.dtype != torch.float32 else None
        row(name, before, unet_step(ours, b, device, repeat))
    if cuda:
        ops = sdpa_ops(ours, device)
        print(f"  SDPA ops in a {ours.dtype} UNet call: {sorted(ops)}")
        if ours.dtype != torch.float32:
            assert any("flash" in o for o in ops), f"SDPA did not run the flash kernel: {ops}"
    else:
        print(f"  SDPA ops in a UNet call (CPU): {sorted(sdpa_ops(ours, device))}")

    with torch.inference_mode():
        (t_old_prep, (mapping, cond_old)), (t_new_prep, job) = paired(
            lambda: prev_prepare(fp32, mask), lambda: ours.prepare(PARAMS, {"mask": mask}), device, repeat
        )
        row("labels → model grid, condition (ours: + scheduler)", t_old_prep, t_new_prep)
        (t_old_s, images_old), (t_new_s, images) = paired(
            lambda: prev_sample(fp32, cond_old, PARAMS),
            lambda: ours.sample_batch([job], [lambda d, t: None])[0],
            device,
            repeat,
        )
        row("sampling + decoding (host copy before)", t_old_s, t_new_s)
        (t_old_m, vols_old), (t_new_m, vols) = paired(
            lambda: prev_from_grid(mapping, images_old),
            lambda: [v.data for v in ours.finish(job, images)],
            device,
            repeat,
        )
        row("model grid → mask grid, to host", t_old_m, t_new_m)
    vols, vols_old = job_outputs(vols, mask), job_outputs(vols_old, mask)
    (t_old_e, blobs_old), (t_new_e, blobs) = paired(
        lambda: prev_encode(vols_old, mask.affine), lambda: our_encode(vols, mask.affine, pool), device, repeat
    )
    row(
        f"encode {len(vols)} NIfTI ({sum(map(len, blobs_old)) / 1e6:.0f} → {sum(map(len, blobs)) / 1e6:.0f} MB)",
        t_old_e,
        t_new_e,
    )
    (t_old_u, _), (t_new_u, _) = paired(
        lambda: store_all(store, "u/prev", blobs_old, None),
        lambda: store_all(store, "u/ours", blobs, pool),
        device,
        repeat,
    )
    row("upload (filesystem store)", t_old_u, t_new_u)
    with torch.inference_mode():
        (t_old_j, _), (t_new_j, _) = paired(
            lambda: prev_job(fp32, mask, store, "j/prev"),
            lambda: our_job(ours, mask, store, "j/ours", pool),
            device,
            repeat,
        )
    row("whole job", t_old_j, t_new_j)

    jobs_per_second(ours, mask, store, pool, n_jobs, device, repeat)
    if cuda and not args.no_monai:
        monai_vs_ours(ours, fp32, entry, job, device, repeat)
    if cuda and args.compile:
        compiled(entry, device, n_jobs, repeat, args.precision)
    if args.family == "all":
        tavit(device, args, repeat)
        stylegan2(args, repeat)


def stylegan2(args, repeat: int) -> None:
    """StyleGAN2's section: its own script in its own process (it keeps its own clock and presets)."""
    import subprocess

    cmd = [sys.executable, str(ROOT / "benchmarks" / "stylegan2_throughput.py"), "--device", args.device]
    cmd += ["--clock", args.clock, "--repeat", str(repeat)] + (["--compile"] if args.compile else [])
    print(flush=True)
    subprocess.run(cmd, check=True)


def tavit(device, args, repeat: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_job_tavit import tavit_section

    tavit_section(device, args.tavit_model, args.precision, repeat, paired, row)


def jobs_per_second(gen, mask, store, pool, n: int, device, repeat: int) -> None:
    """n jobs (other seeds) one after the other, then as task threads sharing a Batcher; same outputs."""
    plist = [GenerationParams(**(PARAMS.__dict__ | {"seed": 100 + k})) for k in range(n)]

    def one_by_one():
        with torch.inference_mode():
            return [our_job(gen, mask, store, f"s/{k}", pool, params=p) for k, p in enumerate(plist)]

    def batched():
        batcher, out = Batcher(max_samples=n, max_wait_s=2.0), [None] * n
        ready = threading.Barrier(n)

        def task(k: int) -> None:
            with torch.inference_mode():
                with batcher.preparing() as span:
                    ready.wait()
                    job = gen.prepare(plist[k], {"mask": mask})
                    images = batcher.sample(gen, job, 1, lambda d, t: None, span)
                vols = job_outputs([v.data for v in gen.finish(job, images)], mask)
                store_all(store, f"b/{k}", our_encode(vols, mask.affine, pool), pool)
                out[k] = vols

        threads = [threading.Thread(target=task, args=(k,)) for k in range(n)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert list(batcher.batches) == [n], list(batcher.batches)
        return out

    (t_seq, seq), (t_bat, out) = paired(one_by_one, batched, device, repeat)
    worst = max(float(np.abs(a - b).max()) for s, b_ in zip(seq, out) for a, b in zip(s, b_))
    row(f"{n} jobs, one by one → one batch", n / t_seq, n / t_bat, "jobs/s")
    print(f"  batched outputs vs one by one: max difference {worst:.2e} z (kernel rounding by batch size)")


def monai_vs_ours(ours, fp32, entry, job, device, repeat) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ldm_samplers import monai_reference

    net = fp32.network
    shape = (1, net.latent_channels, *net.latent_shape(fp32.grid_shape))
    cond = job.cond.float()
    with torch.inference_mode():
        t_monai, _ = timed(
            lambda: monai_reference(net, entry, cond, shape, torch.Generator(device).manual_seed(0), 50), device, repeat
        )
        t_ours, _ = timed(lambda: ours.sample_batch([job], [lambda d, t: None]), device, repeat)
    row(f"sampling: MONAI LDM inferer DDIM-50 fp32 → ours {PARAMS.sampler} {PARAMS.steps}", t_monai, t_ours)


def compiled(entry, device, batch: int, repeat: int, precision: str) -> None:
    """torch.compile of the UNet (CUDA graphs: mode reduce-overhead) on the fixed shapes of the sampling loop."""
    for b in (1, batch):
        gen = LDMGenerator(entry, device, precision=precision)
        plain = unet_step(gen, b, device, repeat)
        gen.network.unet = torch.compile(gen.network.unet, mode="reduce-overhead", fullgraph=False)
        t = time.perf_counter()
        unet_step(gen, b, device, 1)
        warm = time.perf_counter() - t
        row(f"UNet step batch {b}: eager → compiled (warm-up {warm:.0f} s)", plain, unet_step(gen, b, device, repeat))


def load_entry(model: str | None, cuda: bool, tmp: Path):
    from tumorsynth.models.ldm.configs import create_untrained
    from tumorsynth.models.registry import entry_at

    if model:
        return entry_at(Path(model))
    if cuda:
        return create_untrained(tmp / "models" / "ldm", preset="paper", seed=0)
    return entry_at(ROOT / "checkpoints/ldm/demo-phantom@1")


if __name__ == "__main__":
    main()
