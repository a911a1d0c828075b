"""Serve an LDM checkpoint: tumour mask in, multi-contrast volumes out.

One job: mask labels → nested region channels → the model grid (a fixed field of view centred on the mask) →
latent-resolution condition → reverse diffusion in latent space → decoder → intensities as z-scores over the brain
(the paper's normalisation, background 0) → back to the mask's grid, or left on the model grid.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import InvalidRequest
from ...imaging.geometry import GridMapping, fit_to_grid
from ...imaging.labels import to_regions
from ..base import GeneratedVolume, GenerationParams, ProgressFn
from ..checkpoints import load_into
from ..options import check_options
from ..registry import ModelEntry
from .configs import build_network
from .sampler import reverse_process
from .schedulers import make_scheduler

Z_LIMIT = 10.0  # decoded z-scores beyond ±10 are artefacts of an untrained or diverging model
DECODE_BATCH = 2  # volumes decoded at once; the decoder at full resolution is the memory peak


class LDMGenerator:
    def __init__(self, entry: ModelEntry, device: str | torch.device):
        self.entry = entry
        self.device = torch.device(device)
        self.network = load_into(build_network(entry.config), entry, self.device).requires_grad_(False)
        self.grid_shape = tuple(int(n) for n in entry.output_shape)
        self.fov_mm = tuple(float(f) for f in entry.config["fov_mm"])
        self.schedule = dict(entry.config.get("schedule", {}))

    def total_steps(self, params: GenerationParams) -> int:
        return int(params.steps)  # decoding is not counted

    def generate(
        self, params: GenerationParams, inputs: dict, progress: ProgressFn
    ) -> list[GeneratedVolume]:
        modalities = self._check(params)
        scheduler = self._scheduler(params)
        mask = inputs.get("mask")
        if mask is None:
            raise InvalidRequest.for_field("mask", "this model needs a tumour mask input named 'mask'")
        labels = _labels_3d(mask.data)
        mapping = fit_to_grid(labels.shape, mask.affine, self.grid_shape, self.fov_mm)
        with torch.inference_mode():
            images = self._sample(params, scheduler, mapping.to_grid(labels, order=0), progress)
        return [
            self._output(images[i, self.entry.modalities.index(m)], m, i, params, mapping, mask)
            for i in range(params.num_samples)
            for m in modalities
        ]

    def _sample(
        self, params: GenerationParams, scheduler, grid_labels: np.ndarray, progress: ProgressFn
    ) -> np.ndarray:
        """Model-grid images (N, C, X, Y, Z) as z-scores for labels on the model grid."""
        net, n = self.network, params.num_samples
        regions = torch.from_numpy(to_regions(grid_labels))[None].to(self.device)  # (1, 3, X, Y, Z)
        cond = net.condition(regions).expand(n, -1, -1, -1, -1)  # (N, 3, x, y, z)
        class_labels = torch.full((n,), self._class_index(params.tumor_class), device=self.device, dtype=torch.long)
        shape = (n, net.latent_channels, *net.latent_shape(self.grid_shape))
        generators = [torch.Generator(self.device).manual_seed(params.seed + i) for i in range(n)]
        sampled = reverse_process(
            lambda z, t: net.denoise(z, t, cond, class_labels), scheduler, shape, generators, self.device, progress
        )
        chunks = [net.decode(z) for z in sampled.latents.split(DECODE_BATCH)]  # (b, C, X, Y, Z) each
        return torch.cat(chunks).clamp_(-Z_LIMIT, Z_LIMIT).float().cpu().numpy()

    def _output(self, image: np.ndarray, modality: str, index: int, params: GenerationParams,
                mapping: GridMapping, mask) -> GeneratedVolume:
        if params.output_grid == "input":
            data = mapping.from_grid(image, order=1)
            affine = np.array(mask.affine, dtype=np.float64)
            return GeneratedVolume(modality, index, data.astype(np.float32), affine, mask)
        return GeneratedVolume(modality, index, image.astype(np.float32), mapping.grid_affine.copy(), None)

    def _class_index(self, tumor_class: str | None) -> int:
        """Index 0 is 'unconditional'; class k of ``classes`` is k + 1."""
        classes = self.entry.classes
        if tumor_class is None:
            return 0
        if tumor_class not in classes:
            raise InvalidRequest.for_field(
                "tumor_class", f"'{tumor_class}' is not a class of {self.entry.id}; choose one of {', '.join(classes)}"
            )
        return classes.index(tumor_class) + 1

    def _check(self, params: GenerationParams) -> tuple[str, ...]:
        """Refuse what this model cannot do; return the modalities to write (all when none are named)."""
        wanted = tuple(params.modalities) or self.entry.modalities
        unknown = [m for m in wanted if m not in self.entry.modalities]
        if unknown:
            raise InvalidRequest.for_field(
                "modalities", f"{', '.join(unknown)} not generated by {self.entry.id}; "
                              f"it generates {', '.join(self.entry.modalities)}"
            )
        if params.output_grid not in ("input", "model"):
            raise InvalidRequest.for_field("output_grid", f"'{params.output_grid}' is neither 'input' nor 'model'")
        if params.num_samples < 1:
            raise InvalidRequest.for_field("num_samples", f"at least 1 sample is needed, got {params.num_samples}")
        check_options(self.entry.options, params.options, self.entry.id)  # none declared: refuses any given
        return wanted

    def _scheduler(self, params: GenerationParams):
        try:
            self.entry.sampler(params.sampler)
        except KeyError:
            names = ", ".join(s.name for s in self.entry.samplers)
            raise InvalidRequest.for_field(
                "sampler", f"'{params.sampler}' is not offered; choose one of {names}") from None
        try:
            return make_scheduler(params.sampler or self.entry.default_sampler, params.steps, self.schedule)
        except ValueError as exc:
            raise InvalidRequest.for_field("steps", str(exc)) from exc


def _labels_3d(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise InvalidRequest.for_field("mask", f"the mask must be a 3D volume, got shape {data.shape}")
    return np.rint(data).astype(np.int16)
