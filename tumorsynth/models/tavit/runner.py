"""Serve a TA-ViT checkpoint: T1 (+ FLAIR) volume in, synthetic T1C volume out, in the T1's geometry.

One job: each input volume → z-scores over its non-zero voxels (``slices.zscore_brain``) → the slice grid (in-plane
resampling only, ``slices.slice_mapping``) → the slices holding brain, in ``slice_batches`` batches (one progress step
each, so a cancel lands between batches) → tumour regions, predicted by the segmenter or taken from the user's mask →
TA-ViT → T1C slices → back to the T1's shape and affine, 0 where the T1 is 0. A ``slice_context`` network gets each
slice with its neighbours as extra channels (``slices.with_context``). For a ``residual`` network only its residual,
T1C − T1, goes back through the in-plane resampling and is added to the z-scored T1 at the input's own resolution:
healthy anatomy keeps the T1's detail instead of the slice grid's.

The T1C is returned as z-scores over the brain (the training targets' normalisation): about −3 to 3 in healthy
tissue and higher in enhancing tumour, with the background 0. The network is deterministic: one input, one output.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import InvalidRequest
from ...imaging.labels import to_regions
from ..base import GeneratedVolume, GenerationParams, ProgressFn
from ..checkpoints import load_into
from ..registry import ModelEntry
from .configs import build_network, image_inputs
from .slices import brain_slices, from_slices, slice_mapping, to_slices, with_context, zscore_brain

Z_LIMIT = 10.0  # z-scores beyond ±10 are artefacts of an untrained or diverging model


class TAViTGenerator:
    def __init__(self, entry: ModelEntry, device: str | torch.device):
        self.entry = entry
        self.device = torch.device(device)
        self.network = load_into(build_network(entry.config), entry, self.device).requires_grad_(False)
        self.grid = tuple(int(n) for n in entry.output_shape)
        self.fov_mm = tuple(float(f) for f in entry.config["fov_mm"])
        self.image_inputs = image_inputs(entry.config)
        inference = entry.config.get("inference", {})
        self.slice_batches = int(inference.get("slice_batches", 8))
        self.max_batch_slices = int(inference.get("max_batch_slices", 16))
        self.residual = bool(entry.config["network"].get("residual", False))
        self.slice_context = int(entry.config["network"].get("slice_context", 0))

    def total_steps(self, params: GenerationParams) -> int:
        return self.slice_batches

    def generate(self, params: GenerationParams, inputs: dict, progress: ProgressFn) -> list[GeneratedVolume]:
        self._check(params)
        volumes = {name: _volume_3d(inputs, name, self.entry.id) for name in self.image_inputs}
        t1 = inputs["t1"]
        mapping = slice_mapping(volumes["t1"].shape, t1.affine, self.grid, self.fov_mm)
        images = np.stack([zscore_brain(volumes[name]) for name in self.image_inputs])  # (C, X, Y, Z)
        grid_images = mapping.to_grid(images, order=1).astype(np.float32)  # (C, H, W, Z)
        regions = None
        if inputs.get("mask") is not None:
            labels = np.rint(_volume_3d(inputs, "mask", self.entry.id, like=volumes["t1"].shape)).astype(np.int16)
            regions = to_slices(to_regions(mapping.to_grid(labels, order=0)))  # (Z, 3, H, W)
        slices = with_context(to_slices(grid_images), self.slice_context)  # (Z, C·(2k + 1), H, W)
        t1c = self._synthesise(slices, regions, brain_slices(grid_images[0]), progress)  # (Z, H, W)
        grid_t1c = from_slices(t1c) * (grid_images[0] != 0)  # (H, W, Z)
        if params.output_grid == "model":
            return [GeneratedVolume("t1c", 0, grid_t1c.astype(np.float32), mapping.grid_affine.copy(), None)]
        if self.residual:  # T1C − T1 back to the input grid, added to the T1 at its own resolution
            data = images[0] + mapping.from_grid(grid_t1c - grid_images[0], order=1)
        else:
            data = mapping.from_grid(grid_t1c, order=1)
        data[volumes["t1"] == 0] = 0.0
        return [GeneratedVolume("t1c", 0, data.astype(np.float32), np.array(t1.affine, dtype=np.float64), t1)]

    def _synthesise(self, slices: np.ndarray, regions: np.ndarray | None, brain: np.ndarray,
                    progress: ProgressFn) -> np.ndarray:
        """T1C for the ``brain`` slices of (Z, C, H, W) inputs, 0 for the rest; progress once per slice batch."""
        out = np.zeros((slices.shape[0], *slices.shape[2:]), np.float32)
        batches = np.array_split(brain, self.slice_batches)
        for done, batch in enumerate(batches, 1):
            for chunk in np.array_split(batch, max(1, -(-len(batch) // self.max_batch_slices))):
                if len(chunk):
                    out[chunk] = self._forward(slices[chunk], None if regions is None else regions[chunk])
            progress(done, len(batches))
        return out

    @torch.inference_mode()
    def _forward(self, x: np.ndarray, regions: np.ndarray | None) -> np.ndarray:
        x_t = torch.from_numpy(x).to(self.device)  # (b, C, H, W)
        r_t = None if regions is None else torch.from_numpy(regions).to(self.device)  # (b, 3, H, W)
        y = self.network(x_t, r_t)  # (b, 1, H, W)
        return y[:, 0].clamp_(-Z_LIMIT, Z_LIMIT).float().cpu().numpy()

    def _check(self, params: GenerationParams) -> None:
        """Refuse what this model cannot do, naming the field to change."""
        unknown = [m for m in params.modalities if m not in self.entry.modalities]
        if unknown:
            raise InvalidRequest.for_field("modalities", f"{', '.join(unknown)} not generated by {self.entry.id}; "
                                                         "it generates t1c")
        if params.num_samples != 1:
            raise InvalidRequest.for_field("num_samples", f"{self.entry.id} is deterministic: one input gives one "
                                                          f"T1C; ask for 1 sample, not {params.num_samples}")
        if params.output_grid not in ("input", "model"):
            raise InvalidRequest.for_field("output_grid", f"'{params.output_grid}' is neither 'input' nor 'model'")
        if params.tumor_class is not None:
            raise InvalidRequest.for_field("tumor_class", f"{self.entry.id} takes no tumour class; leave it out")
        try:
            sampler = self.entry.sampler(params.sampler)
        except KeyError:
            raise InvalidRequest.for_field("sampler", f"'{params.sampler}' is not offered; use 'direct'") from None
        if not sampler.min_steps <= params.steps <= sampler.max_steps:
            raise InvalidRequest.for_field("steps", f"the direct sampler runs in {sampler.max_steps} step, "
                                                    f"not {params.steps}")


def _volume_3d(inputs: dict, name: str, model_id: str, like: tuple[int, ...] | None = None) -> np.ndarray:
    volume = inputs.get(name)
    if volume is None:
        raise InvalidRequest.for_field(name, f"{model_id} needs an input named '{name}'")
    data = np.asarray(volume.data)
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise InvalidRequest.for_field(name, f"'{name}' must be a 3D volume, got shape {data.shape}")
    if like is not None and data.shape != like:
        raise InvalidRequest.for_field(name, f"'{name}' has shape {data.shape}, the T1 {like}; upload them on "
                                             "one grid")
    return data
