"""The TA-ViT runner's code path before issue 15, kept verbatim as the reference the new one is held to.

Host work in numpy and scipy (z-scores, ``GridMapping.to_grid``/``from_grid``, ``slices.with_context``), the
network in fp32 one chunk of slices at a time, each chunk copied to the device and its output back to the host.
tests/models/test_tavit_fast.py checks that the served path gives the same T1C within float tolerance, and
benchmarks/gpu_job_tavit.py times both side by side. Frozen: do not "fix" it, it is the baseline.
"""

from __future__ import annotations

import numpy as np
import torch

from tumorsynth.imaging.labels import to_regions
from tumorsynth.models.base import GeneratedVolume, GenerationParams, ProgressFn
from tumorsynth.models.tavit.runner import Z_LIMIT, TAViTGenerator, _volume_3d
from tumorsynth.models.tavit.slices import (
    brain_slices,
    from_slices,
    slice_mapping,
    to_slices,
    with_context,
    zscore_brain,
)


def previous_generate(
    gen: TAViTGenerator, params: GenerationParams, inputs: dict, progress: ProgressFn
) -> list[GeneratedVolume]:
    """``TAViTGenerator.generate`` as it was; ``gen`` must hold fp32 weights (``precision="fp32"``)."""
    if gen.dtype != torch.float32:
        raise ValueError(
            f"the previous path ran fp32 weights; build the generator with precision='fp32', not {gen.dtype}"
        )
    gen._check(params)
    volumes = {name: _volume_3d(inputs, name, gen.entry.id) for name in gen.image_inputs}
    t1 = inputs["t1"]
    mapping = slice_mapping(volumes["t1"].shape, t1.affine, gen.grid, gen.fov_mm)
    images = np.stack([zscore_brain(volumes[name]) for name in gen.image_inputs])  # (C, X, Y, Z)
    grid_images = mapping.to_grid(images, order=1).astype(np.float32)  # (C, H, W, Z)
    regions = None
    if inputs.get("mask") is not None:
        labels = np.rint(_volume_3d(inputs, "mask", gen.entry.id, like=volumes["t1"].shape)).astype(np.int16)
        regions = to_slices(to_regions(mapping.to_grid(labels, order=0)))  # (Z, 3, H, W)
    slices = with_context(to_slices(grid_images), gen.slice_context)  # (Z, C·(2k + 1), H, W)
    t1c = _synthesise(gen, slices, regions, brain_slices(grid_images[0]), progress)  # (Z, H, W)
    grid_t1c = from_slices(t1c) * (grid_images[0] != 0)  # (H, W, Z)
    if params.output_grid == "model":
        return [GeneratedVolume("t1c", 0, grid_t1c.astype(np.float32), mapping.grid_affine.copy(), None)]
    if gen.residual:  # T1C − T1 back to the input grid, added to the T1 at its own resolution
        data = images[0] + mapping.from_grid(grid_t1c - grid_images[0], order=1)
    else:
        data = mapping.from_grid(grid_t1c, order=1)
    data[volumes["t1"] == 0] = 0.0
    return [GeneratedVolume("t1c", 0, data.astype(np.float32), np.array(t1.affine, dtype=np.float64), t1)]


def _synthesise(
    gen: TAViTGenerator, slices: np.ndarray, regions: np.ndarray | None, brain: np.ndarray, progress: ProgressFn
) -> np.ndarray:
    out = np.zeros((slices.shape[0], *slices.shape[2:]), np.float32)
    batches = np.array_split(brain, gen.slice_batches)
    for done, batch in enumerate(batches, 1):
        for chunk in np.array_split(batch, max(1, -(-len(batch) // gen.max_batch_slices))):
            if len(chunk):
                out[chunk] = _forward(gen, slices[chunk], None if regions is None else regions[chunk])
        progress(done, len(batches))
    return out


@torch.inference_mode()
def _forward(gen: TAViTGenerator, x: np.ndarray, regions: np.ndarray | None) -> np.ndarray:
    x_t = torch.from_numpy(x).to(gen.device)  # (b, C, H, W)
    r_t = None if regions is None else torch.from_numpy(regions).to(gen.device)  # (b, 3, H, W)
    y = gen.network(x_t, r_t)  # (b, 1, H, W)
    return y[:, 0].clamp_(-Z_LIMIT, Z_LIMIT).float().cpu().numpy()
