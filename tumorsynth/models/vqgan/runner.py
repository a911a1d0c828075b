"""Serve a VQGAN checkpoint: a tumour class in, tumour-centred ROIs out.

One job: class → token grid (``maskgit``: parallel decoding in 4-16 steps; ``ar``: one step per token, KV-cached)
→ decoder → intensities in [-1, 1] (clipped z-scores, see the checkpoint's ``intensity``) on the ROI grid, whose
affine has the ROI's spacing on its diagonal and the ROI's centre at the world origin. There is no input volume, so
``output_grid`` has nothing to map back to: the ROI grid is the output either way.

Request options (``params.options``), defaults from the checkpoint's ``sampling``: ``temperature``,
``choice_temperature`` (MaskGIT), ``guidance`` (classifier-free, 0 = off), ``top_k`` (AR).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import InvalidRequest
from ...imaging.geometry import centred_affine
from ..base import GeneratedVolume, GenerationParams, ProgressFn
from ..checkpoints import load_into
from ..options import check_options
from ..registry import ModelEntry
from .configs import build_network
from .sampler import Sampled, ar_decode, guided, maskgit_decode
from .transformer import TokenTransformer

DECODE_BATCH = 4


class VQGANGenerator:
    def __init__(self, entry: ModelEntry, device: str | torch.device):
        self.entry = entry
        self.device = torch.device(device)
        self.network = load_into(build_network(entry.config), entry, self.device).requires_grad_(False)
        self.grid_shape = tuple(int(n) for n in entry.output_shape)
        self.affine = centred_affine(self.grid_shape, entry.output_spacing)

    def total_steps(self, params: GenerationParams) -> int:
        if (params.sampler or self.entry.default_sampler) == "ar":
            return self.network.num_tokens
        return int(params.steps)  # decoding is not counted

    def generate(self, params: GenerationParams, inputs: dict, progress: ProgressFn) -> list[GeneratedVolume]:
        modalities = self._check(params)
        sampler = self._sampler(params)
        label = self._class_index(params.tumor_class)
        with torch.inference_mode():
            images = self._sample(params, sampler, label, progress)
        return [
            GeneratedVolume(
                m,
                i,
                np.ascontiguousarray(images[i, self.entry.modalities.index(m)], dtype=np.float32),
                self.affine.copy(),
                None,
            )
            for i in range(params.num_samples)
            for m in modalities
        ]

    def _sample(self, params: GenerationParams, sampler: str, label: int, progress: ProgressFn) -> np.ndarray:
        net, n = self.network, params.num_samples
        options = self._options(params)
        labels = torch.full((n,), label, dtype=torch.long, device=self.device)
        generators = [torch.Generator(self.device).manual_seed(params.seed + i) for i in range(n)]
        if sampler == "ar":
            sampled: Sampled = ar_decode(
                self._ar(),
                labels,
                generators,
                progress,
                temperature=options["temperature"],
                top_k=options["top_k"],
                guidance=options["guidance"],
            )
        else:
            sampled = maskgit_decode(
                guided(net.maskgit, labels, options["guidance"]),
                net.num_tokens,
                net.mask_id,
                int(params.steps),
                generators,
                self.device,
                progress,
                temperature=options["temperature"],
                choice_temperature=options["choice_temperature"],
            )
        chunks = [net.decode_tokens(t) for t in sampled.tokens.split(DECODE_BATCH)]  # (b, C, X, Y, Z) each
        return torch.cat(chunks).clamp_(-1.0, 1.0).float().cpu().numpy()

    def _options(self, params: GenerationParams) -> dict:
        """Every option (models/vqgan/options.py) checked as the API checks it, defaults the checkpoint's."""
        return check_options(self.entry.options, params.options, self.entry.id)

    def _class_index(self, tumor_class: str | None) -> int:
        """Class k of ``classes`` is embedding k + 1 (0 is the unconditional embedding of guidance)."""
        classes = self.entry.classes
        if tumor_class is None or tumor_class not in classes:
            what = (
                "no tumor_class was given"
                if tumor_class is None
                else f"'{tumor_class}' is not a class of {self.entry.id}"
            )
            raise InvalidRequest.for_field("tumor_class", f"{what}; choose one of {', '.join(classes)}")
        return classes.index(tumor_class) + 1

    def _check(self, params: GenerationParams) -> tuple[str, ...]:
        wanted = tuple(params.modalities) or self.entry.modalities
        unknown = [m for m in wanted if m not in self.entry.modalities]
        if unknown:
            raise InvalidRequest.for_field(
                "modalities",
                f"{', '.join(unknown)} not generated by {self.entry.id}; "
                f"it generates {', '.join(self.entry.modalities)}",
            )
        if params.output_grid not in ("input", "model"):
            raise InvalidRequest.for_field("output_grid", f"'{params.output_grid}' is neither 'input' nor 'model'")
        if params.num_samples < 1:
            raise InvalidRequest.for_field("num_samples", f"at least 1 sample is needed, got {params.num_samples}")
        return wanted

    def _sampler(self, params: GenerationParams) -> str:
        try:
            spec = self.entry.sampler(params.sampler)
        except KeyError:
            names = ", ".join(s.name for s in self.entry.samplers)
            raise InvalidRequest.for_field(
                "sampler", f"'{params.sampler}' is not offered; choose one of {names}"
            ) from None
        if spec.name == "ar":
            self._ar()
        if spec.name != "ar" and not spec.min_steps <= int(params.steps) <= spec.max_steps:
            raise InvalidRequest.for_field(
                "steps", f"{spec.name} takes {spec.min_steps} to {spec.max_steps} steps, got {params.steps}"
            )
        if spec.name == "ar" and int(params.steps) not in (0, spec.default_steps):
            raise InvalidRequest.for_field(
                "steps", f"ar decodes one token per step: {spec.default_steps} steps, got {params.steps}"
            )
        return spec.name

    def _ar(self) -> TokenTransformer:
        """The autoregressive transformer, refused when the checkpoint has none (``ar_depth=0``)."""
        if self.network.ar is None:
            raise InvalidRequest.for_field("sampler", f"{self.entry.id} has no autoregressive transformer")
        return self.network.ar
