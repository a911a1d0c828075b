"""TA-ViT's part of benchmarks/gpu_job.py: one 240×240×155 volume, the previous path against ours, side by side.

Previous path: tests/models/tavit_previous.py (z-scores, scipy grid mapping and context slices on the host, fp32
weights, each chunk of slices copied to the device and back). Ours: ``TAViTGenerator.generate`` as it serves (the
volumes on the device once, slice batches queued without host copies, bf16 weights on CUDA).

Rows: the whole volume with the segmenter's regions and with a user's mask (examples/masks, BraTS 2023 labels), and
the network alone over the brain slices (fp32 → ours' dtype). On CUDA also the SDPA kernel the transformer runs,
asserted to be flash attention for bf16 weights. On a GPU the paper preset (untrained: timing only); on the CPU the
demo checkpoint, as a correctness run: our fp32 path must give the previous path's T1C within 1e-3 z.
Input: a T1 and a FLAIR of noisy ellipsoids on the example mask's 240×240×155 grid.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.models.tavit_previous import previous_generate  # noqa: E402
from tumorsynth.imaging.nifti import read_volume  # noqa: E402
from tumorsynth.models.base import GenerationParams  # noqa: E402
from tumorsynth.models.tavit import volumes as vol  # noqa: E402
from tumorsynth.models.tavit.runner import TAViTGenerator  # noqa: E402
from tumorsynth.models.tavit.slices import slice_mapping  # noqa: E402

MASK = ROOT / "examples/masks/example_brats2023_mask.nii.gz"
PARAMS = GenerationParams(num_samples=1, seed=0, sampler="direct", steps=1, modalities=("t1c",))


class Upload:
    """What the runner reads of an uploaded volume."""

    def __init__(self, data: np.ndarray, affine: np.ndarray):
        self.data, self.affine = data, affine

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def inputs() -> dict[str, Upload]:
    mask = read_volume(MASK.read_bytes())
    shape, affine = mask.shape[:3], np.asarray(mask.affine)
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    brain = x**2 / 0.55 + y**2 / 0.7 + z**2 / 0.75 < 1
    images = {
        n: Upload(
            np.where(brain, 400 + 80 * rng.standard_normal(shape, dtype=np.float32), 0).astype(np.float32), affine
        )
        for n in ("t1", "flair")
    }
    return images | {"mask": Upload(np.asarray(mask.data).reshape(shape), affine)}


def load_entry(model: str | None, cuda: bool, tmp: Path):
    from tumorsynth.models.registry import entry_at
    from tumorsynth.models.tavit.configs import create_untrained

    if model:
        return entry_at(Path(model))
    if cuda:
        return create_untrained(tmp / "models" / "tavit", preset="paper", seed=0)
    return entry_at(ROOT / "checkpoints/tavit/demo-phantom@1")


def device_slices(gen: TAViTGenerator, given: dict[str, Upload]) -> tuple[torch.Tensor, torch.Tensor]:
    """The runner's (Z, C, H, W) slices and brain slice indices on the device, for timing the network alone."""
    mapping = slice_mapping(given["t1"].shape, given["t1"].affine, gen.grid, gen.fov_mm)
    with torch.inference_mode():
        images = torch.stack([vol.zscore_brain(gen._to_device(given[n].data, np.float32)) for n in gen.image_inputs])
        grid = vol.to_grid(mapping, images)
        return vol.with_context(vol.to_slices(grid), gen.slice_context), vol.brain_slices(grid[0])


def sdpa_ops(gen: TAViTGenerator, side: int) -> set[str]:
    """The SDPA implementations one slice's forward dispatches to, by the profiler's op names."""
    x = torch.randn(1, gen.network.in_channels, side, side, device=gen.device, dtype=gen.dtype)
    with torch.inference_mode(), torch.profiler.profile() as prof:
        gen.network(x)
    return {e.name for e in prof.events() if "scaled_dot_product" in e.name and e.name.startswith("aten::_")}


def tavit_section(
    device: torch.device, model: str | None, precision: str, repeat: int, paired: Callable, row: Callable
) -> None:
    """``paired`` and ``row`` are gpu_job's: alternating best-of timings and the side-by-side printer."""
    cuda = device.type == "cuda"
    entry = load_entry(model, cuda, Path(tempfile.mkdtemp(prefix="ts-gpu-job-tavit-")))
    fp32 = TAViTGenerator(entry, device, precision="fp32")
    ours = TAViTGenerator(entry, device, precision=precision)
    given = inputs()
    images = {k: given[k] for k in ("t1", "flair")}
    where = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} CPU threads"
    print(
        f"\n{entry.id} on {device} ({where}), slice grid {entry.output_shape}, volume {given['t1'].shape}; "
        f"ours in {ours.dtype}"
    )

    quiet = lambda d, t: None
    before = previous_generate(fp32, PARAMS, images, quiet)[0].data  # also the warm-up of both
    ours32 = fp32.generate(PARAMS, images, quiet)[0].data
    worst = float(np.abs(before - ours32).max())
    assert worst < 1e-3, worst  # a background/tissue mismatch would differ by a whole z-score
    print(f"check: previous and our fp32 T1C agree within 1e-3 z (max {worst:.2e})")
    if ours.dtype != torch.float32:
        after = ours.generate(PARAMS, images, quiet)[0].data
        brain = given["t1"].data != 0
        d = (after - before)[brain]
        print(
            f"check: {ours.dtype} vs fp32: max |Δ| {np.abs(d).max():.3f} z, RMS Δ "
            f"{100 * np.sqrt(np.mean(d**2)) / max(np.sqrt(np.mean(before[brain] ** 2)), 1e-12):.2f} % of the "
            "output's RMS (untrained weights: says little)"
        )

    print(f"\n{'TA-ViT, one volume':52} {'previous':>10} {'ours':>10} {'ratio':>9}")
    for name, req in (("volume, segmenter's regions", images), ("volume, user's mask", given)):
        (t_old, _), (t_new, _) = paired(
            lambda r=req: previous_generate(fp32, PARAMS, r, quiet),
            lambda r=req: ours.generate(PARAMS, r, quiet),
            device,
            repeat,
        )
        row(name, t_old, t_new)
    slices, brain_idx = device_slices(ours, images)
    with torch.inference_mode():
        (t_old, _), (t_new, _) = paired(
            lambda: fp32._synthesise(slices, None, brain_idx, quiet),
            lambda: ours._synthesise(slices, None, brain_idx, quiet),
            device,
            repeat,
        )
    row(f"network, {len(brain_idx)} brain slices (fp32 → {str(ours.dtype).removeprefix('torch.')})", t_old, t_new)
    if cuda:
        ops = sdpa_ops(ours, int(entry.output_shape[0]))
        print(f"  SDPA ops in a {ours.dtype} TA-ViT call: {sorted(ops)}")
        if ours.dtype != torch.float32:
            assert any("flash" in o for o in ops), f"SDPA did not run the flash kernel: {ops}"
        print(f"  target ≤ 0.5 s per volume on an H200: {'met' if t_new <= 0.5 else 'NOT met'} ({t_new:.3f} s)")
