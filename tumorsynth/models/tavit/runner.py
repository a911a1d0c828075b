"""Serve a TA-ViT checkpoint: T1 (+ FLAIR) volume in, synthetic T1C volume out, in the T1's geometry.

One job: each input volume → z-scores over its non-zero voxels (``volumes.zscore_brain``; numpy's on the CPU) → the
slice grid (in-plane resampling only, ``slices.slice_mapping``) → the slices holding brain, in ``slice_batches``
batches (one progress step each, so a cancel lands between batches) → tumour regions, predicted by the segmenter or
taken from the user's mask → TA-ViT → T1C slices → back to the T1's shape and affine, 0 where the T1 is 0. A
``slice_context`` network gets each slice with its neighbours as extra channels (``volumes.with_context``). For a
``residual`` network only its residual, T1C − T1, goes back through the in-plane resampling and is added to the
z-scored T1 at the input's own resolution: healthy anatomy keeps the T1's detail instead of the slice grid's.

All of it runs in torch on the job's device (issue 15): the volumes go to the device once, the slice batches are
queued without waiting for each other's outputs, and the T1C comes back once. On CUDA the weights are bf16
(``models.precision``; ``precision="fp32"`` keeps them fp32); the z-scores, the grid mapping and the residual's sum
with the T1 stay fp32. Images are resampled by ``volumes.to_grid``/``from_grid`` (scipy's zeros exactly), labels by
``imaging.grid_torch`` (nearest neighbour). tests/models/test_tavit_fast.py holds this path to the previous host path.

The T1C is returned as z-scores over the brain (the training targets' normalisation): about −3 to 3 in healthy
tissue and higher in enhancing tumour, with the background 0. The network is deterministic: one input, one output.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import InvalidRequest
from ...imaging import grid_torch
from ..base import GeneratedVolume, GenerationParams, ProgressFn
from ..checkpoints import load_into
from ..precision import weights_dtype
from ..registry import ModelEntry
from . import volumes as vol
from .configs import build_network, image_inputs
from .slices import slice_mapping, zscore_brain

Z_LIMIT = 10.0  # z-scores beyond ±10 are artefacts of an untrained or diverging model


class TAViTGenerator:
    def __init__(self, entry: ModelEntry, device: str | torch.device, precision: str = "auto") -> None:
        self.entry = entry
        self.device = torch.device(device)
        self.dtype = weights_dtype(precision, self.device)
        self.network = load_into(build_network(entry.config), entry, self.device).requires_grad_(False).to(self.dtype)
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

    @torch.inference_mode()
    def generate(self, params: GenerationParams, inputs: dict, progress: ProgressFn) -> list[GeneratedVolume]:
        self._check(params)
        arrays = {name: _volume_3d(inputs, name, self.entry.id) for name in self.image_inputs}
        t1 = inputs["t1"]
        mapping = slice_mapping(arrays["t1"].shape, t1.affine, self.grid, self.fov_mm)
        images = torch.stack([self._zscored(arrays[name]) for name in self.image_inputs])  # (C, X, Y, Z)
        grid_images = vol.to_grid(mapping, images)  # (C, H, W, Z)
        regions = None
        if inputs.get("mask") is not None:
            mask = _volume_3d(inputs, "mask", self.entry.id, like=arrays["t1"].shape)
            labels = self._to_device(mask, np.float32).round_().to(torch.int16)  # np.rint: half to even, as torch
            regions = vol.to_slices(vol.to_regions(grid_torch.to_grid(mapping, labels, order=0)))  # (Z, 3, H, W)
        slices = vol.with_context(vol.to_slices(grid_images), self.slice_context)  # (Z, C·(2k + 1), H, W)
        t1c = self._synthesise(slices, regions, vol.brain_slices(grid_images[0]), progress)  # (Z, H, W)
        grid_t1c = t1c.permute(1, 2, 0) * (grid_images[0] != 0)  # (H, W, Z)
        if params.output_grid == "model":
            return [GeneratedVolume("t1c", 0, _host(grid_t1c), mapping.grid_affine.copy(), None)]
        if self.residual:  # T1C − T1 back to the input grid, added to the T1 at its own resolution
            data = images[0] + vol.from_grid(mapping, grid_t1c - grid_images[0])
        else:
            data = vol.from_grid(mapping, grid_t1c)
        data = data.masked_fill_(self._to_device(arrays["t1"] == 0), 0.0)
        return [GeneratedVolume("t1c", 0, _host(data), np.array(t1.affine, dtype=np.float64), t1)]

    def _to_device(self, array: np.ndarray, dtype: type[np.generic] | None = None) -> torch.Tensor:
        """Host array → tensor on the device (cast on the host first, as the previous path's numpy did)."""
        return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype)).to(self.device)

    def _zscored(self, array: np.ndarray) -> torch.Tensor:
        """A volume's z-scores over its non-zero voxels on the device. On the CPU numpy's (``slices``) is ~7× faster
        than torch's masked reductions (23 vs 156 ms of CPU for 240×240×155), and already where the data is."""
        if self.device.type == "cpu":
            return torch.from_numpy(zscore_brain(array))
        return vol.zscore_brain(self._to_device(array, np.float32))

    def _synthesise(
        self, slices: torch.Tensor, regions: torch.Tensor | None, brain: torch.Tensor, progress: ProgressFn
    ) -> torch.Tensor:
        """T1C (Z, H, W) for the ``brain`` slices of (Z, C, H, W) inputs, 0 for the rest; progress once per slice
        batch, reported when the batch's outputs are done: the next batch is queued before waiting for them, so the
        device does not idle while this thread reports progress or launches kernels."""
        self.network.check_grid(slices.shape[2:])
        out = torch.zeros((slices.shape[0], *slices.shape[2:]), dtype=torch.float32, device=slices.device)
        batches = np.array_split(np.arange(len(brain)), self.slice_batches)  # positions in ``brain``, on the host
        pending: tuple[int, torch.cuda.Event | None] | None = None
        for done, batch in enumerate(batches, 1):
            for chunk in np.array_split(batch, max(1, -(-len(batch) // self.max_batch_slices))):
                if len(chunk):
                    index = brain[int(chunk[0]) : int(chunk[-1]) + 1]  # chunks are runs of consecutive positions
                    out[index] = self._forward(slices[index], None if regions is None else regions[index])
            if pending is not None:
                _wait(pending[1])
                progress(pending[0], len(batches))
            pending = (done, _record(self.device))
        if pending is not None:
            _wait(pending[1])
            progress(pending[0], len(batches))
        return out

    def _forward(self, x: torch.Tensor, regions: torch.Tensor | None) -> torch.Tensor:
        """(b, C, H, W) fp32 slices (and regions) → (b, H, W) fp32 T1C.

        ``network.synthesise`` would add the residual to the T1 in the weights' dtype; in bf16 that rounds the T1 to
        8 significant bits, so the sum is made here in fp32 (for fp32 weights it is the same sum).
        """
        xw = x.to(self.dtype)
        r = self.network.predict_regions(xw) if regions is None else regions.to(self.dtype)  # (b, 3, H, W)
        y = self.network.tavit(xw, r).float()  # (b, 1, H, W)
        if self.residual:
            y = x[:, :1] + y
        return y[:, 0].clamp_(-Z_LIMIT, Z_LIMIT)

    def _check(self, params: GenerationParams) -> None:
        """Refuse what this model cannot do, naming the field to change."""
        unknown = [m for m in params.modalities if m not in self.entry.modalities]
        if unknown:
            raise InvalidRequest.for_field(
                "modalities", f"{', '.join(unknown)} not generated by {self.entry.id}; it generates t1c"
            )
        if params.num_samples != 1:
            raise InvalidRequest.for_field(
                "num_samples",
                f"{self.entry.id} is deterministic: one input gives one "
                f"T1C; ask for 1 sample, not {params.num_samples}",
            )
        if params.output_grid not in ("input", "model"):
            raise InvalidRequest.for_field("output_grid", f"'{params.output_grid}' is neither 'input' nor 'model'")
        if params.tumor_class is not None:
            raise InvalidRequest.for_field("tumor_class", f"{self.entry.id} takes no tumour class; leave it out")
        try:
            sampler = self.entry.sampler(params.sampler)
        except KeyError:
            raise InvalidRequest.for_field("sampler", f"'{params.sampler}' is not offered; use 'direct'") from None
        if not sampler.min_steps <= params.steps <= sampler.max_steps:
            raise InvalidRequest.for_field(
                "steps", f"the direct sampler runs in {sampler.max_steps} step, not {params.steps}"
            )


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
        raise InvalidRequest.for_field(name, f"'{name}' has shape {data.shape}, the T1 {like}; upload them on one grid")
    return data


def _host(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()


def _record(device: torch.device) -> torch.cuda.Event | None:
    """An event after the work queued so far on a CUDA device; None elsewhere (the CPU has finished it)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


def _wait(event: torch.cuda.Event | None) -> None:
    if event is not None:
        event.synchronize()
