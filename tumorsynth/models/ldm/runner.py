"""Serve an LDM checkpoint: tumour mask in, multi-contrast volumes out.

One job: mask labels → nested region channels → the model grid (a fixed field of view centred on the mask) →
latent-resolution condition → reverse diffusion in latent space → decoder → intensities as z-scores over the brain
(the paper's normalisation, background 0) → back to the mask's grid, or left on the model grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...errors import InvalidRequest
from ...imaging import grid_torch
from ...imaging.geometry import GridMapping, fit_to_grid
from ...imaging.labels import to_regions
from ..base import GeneratedVolume, GenerationParams, ProgressFn
from ..checkpoints import load_into
from ..options import check_options
from ..precision import batch_invariance, make_batch_invariant, weights_dtype
from ..registry import ModelEntry
from .configs import build_network
from .sampler import reverse_process
from .schedulers import make_scheduler

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    from ...imaging.nifti import Volume

Z_LIMIT = 10.0  # decoded z-scores beyond ±10 are artefacts of an untrained or diverging model
DECODE_BATCH = 2  # volumes decoded at once; the decoder at full resolution is the memory peak


@dataclass
class LDMJob:
    """One job's share of a batch: its request, geometry and condition (on the device)."""

    params: GenerationParams
    modalities: tuple[str, ...]
    mapping: GridMapping
    mask: Volume
    cond: torch.Tensor  # (1, 3, x, y, z)
    class_index: int
    guidance: float = 0.0  # classifier-free guidance weight on the class (options.py); 0 = off
    regions: torch.Tensor | None = None  # (1, 3, X, Y, Z) on the model grid: what a SPADE decoder draws from


class _AllStopped(Exception):
    """Every job of a batch stopped (canceled or lease lost): stop sampling."""


class LDMGenerator:
    def __init__(
        self, entry: ModelEntry, device: str | torch.device, precision: str = "auto", batch_invariant: bool = False
    ):
        self.entry = entry
        self.device = torch.device(device)
        self.dtype = weights_dtype(precision, self.device)
        network = load_into(build_network(entry.config), entry, self.device).requires_grad_(False)
        scale = network.scale_factor.clone()
        self.network = network.to(self.dtype)
        self.network.scale_factor = scale  # fp32: the latent scale is not rounded to bf16
        self.batch_invariant = batch_invariant
        if batch_invariant:
            make_batch_invariant(self.network)
        self.grid_shape = tuple(int(n) for n in entry.output_shape)
        self.fov_mm = tuple(float(f) for f in entry.config["fov_mm"])
        self.schedule = dict(entry.config.get("schedule", {}))

    def total_steps(self, params: GenerationParams) -> int:
        return int(params.steps)  # decoding is not counted

    def generate(self, params: GenerationParams, inputs: dict, progress: ProgressFn) -> list[GeneratedVolume]:
        job = self.prepare(params, inputs)
        images = self.sample_batch([job], [progress])[0]
        if isinstance(images, BaseException):
            raise images
        return self.finish(job, images)

    # A job in three parts, so that a worker can sample several jobs as one batch (workers/batching.py):
    # prepare (checks, mask → model grid → condition), sample_batch (one reverse process for all), finish (back to
    # the input grid, to the host).

    def batch_key(self, params: GenerationParams) -> tuple:
        """Jobs with equal keys can share a batch: one scheduler, one number of steps."""
        guidance = float(check_options(self.entry.options, params.options, self.entry.id).get("guidance") or 0.0)
        guidance = guidance if params.tumor_class else 0.0  # as prepare() decides
        return (params.sampler or self.entry.default_sampler, int(params.steps), guidance)

    def prepare(self, params: GenerationParams, inputs: dict) -> LDMJob:
        modalities, options = self._check(params)
        self._scheduler(params)  # refuses a bad sampler or step count before anything is sampled
        mask = inputs.get("mask")
        if mask is None:
            raise InvalidRequest.for_field("mask", "this model needs a tumour mask input named 'mask'")
        labels = _labels_3d(mask.data)
        mapping = fit_to_grid(labels.shape, mask.affine, self.grid_shape, self.fov_mm)
        with torch.inference_mode():
            grid_labels = grid_torch.to_grid(mapping, torch.from_numpy(labels).to(self.device), order=0)
            regions = torch.from_numpy(to_regions(grid_labels.cpu().numpy()))[None].to(self.device, self.dtype)
            cond = self.network.condition(regions)  # (1, 3, x, y, z)
        class_index = self._class_index(params.tumor_class)
        # without a class both passes would be the unconditional one: (1 + w)·u − w·u = u, so skip the second
        guidance = float(options.get("guidance") or 0.0) if class_index else 0.0
        spade = getattr(self.network, "ae_decoder", "plain") == "spade"
        return LDMJob(params, modalities, mapping, mask, cond, class_index, guidance, regions if spade else None)

    def sample_batch(self, jobs: list[LDMJob], progress: list[ProgressFn]) -> list[torch.Tensor | BaseException]:
        """Model-grid z-scores (n, C, X, Y, Z) on the device for each job, or what its progress raised (e.g.
        ``JobCanceled``: that job leaves the batch, the others go on). Sample i of a job draws from its own
        generator (seed + i), so what the batch holds besides it changes no random draw."""
        net = self.network
        sizes = [j.params.num_samples for j in jobs]
        cond = torch.cat([j.cond.expand(n, -1, -1, -1, -1) for j, n in zip(jobs, sizes)])
        class_labels = torch.tensor(
            [j.class_index for j, n in zip(jobs, sizes) for _ in range(n)], device=self.device, dtype=torch.long
        )
        generators = [
            torch.Generator(self.device).manual_seed(j.params.seed + i)
            for j in jobs
            for i in range(j.params.num_samples)
        ]
        shape = (sum(sizes), net.latent_channels, *net.latent_shape(self.grid_shape))
        stopped: list[BaseException | None] = [None] * len(jobs)

        def report(done: int, total: int) -> None:
            for k, fn in enumerate(progress):
                if stopped[k] is None:
                    try:
                        fn(done, total)
                    except Exception as exc:  # this job stops (canceled, lease lost); its partners go on
                        stopped[k] = exc
            if all(stopped):
                raise _AllStopped()

        guidance = jobs[0].guidance  # batch_key: one weight per batch

        def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if not guidance:
                return net.denoise(z.to(self.dtype), t, cond, class_labels).float()  # scheduler arithmetic in fp32
            # the unconditional pass (class 0, same mask) batched alongside the conditional one
            both = net.denoise(
                torch.cat([z, z]).to(self.dtype),
                torch.cat([t, t]) if t.ndim else t,
                torch.cat([cond, cond]),
                torch.cat([class_labels, torch.zeros_like(class_labels)]),
            )
            conditional, unconditional = both.float().chunk(2)
            return (1 + guidance) * conditional - guidance * unconditional

        with torch.inference_mode(), batch_invariance(self.batch_invariant):
            try:
                sampled = reverse_process(
                    denoise, self._scheduler(jobs[0].params), shape, generators, self.device, report
                )
            except _AllStopped:
                return list(stopped)  # type: ignore[arg-type]
            latents = sampled.latents.to(self.dtype)
            job_regions = [j.regions for j in jobs if j.regions is not None]
            regions = (
                torch.cat([r.expand(n, -1, -1, -1, -1) for r, n in zip(job_regions, sizes)])
                if len(job_regions) == len(jobs)
                else None
            )
            chunks = [
                net.decode(
                    z,
                    None if regions is None else regions[k : k + DECODE_BATCH],
                    class_labels[k : k + DECODE_BATCH],
                )
                for k, z in zip(range(0, len(latents), DECODE_BATCH), latents.split(DECODE_BATCH))
            ]  # (b, C, X, Y, Z) each
            images = torch.cat(chunks).float().clamp_(-Z_LIMIT, Z_LIMIT)
        return [stop or part for stop, part in zip(stopped, images.split(sizes))]

    def finish(self, job: LDMJob, images: torch.Tensor) -> list[GeneratedVolume]:
        """The requested contrasts, mapped back to the mask's grid on the device (or left on the model grid)."""
        channels = [self.entry.modalities.index(m) for m in job.modalities]
        with torch.inference_mode():
            picked = images[:, channels]
            if job.params.output_grid == "input":
                picked = grid_torch.from_grid(job.mapping, picked, order=1)
            data = picked.cpu().numpy()
        if job.params.output_grid == "input":
            affine, reference = np.array(job.mask.affine, dtype=np.float64), job.mask
        else:
            affine, reference = job.mapping.grid_affine, None
        return [
            GeneratedVolume(m, i, data[i, c], affine.copy(), reference)
            for i in range(job.params.num_samples)
            for c, m in enumerate(job.modalities)
        ]

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

    def _check(self, params: GenerationParams) -> tuple[tuple[str, ...], dict]:
        """Refuse what this model cannot do; return the modalities to write (all when none are named) and the
        request's options with the checkpoint's defaults."""
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
        options = check_options(self.entry.options, params.options, self.entry.id)  # refuses undeclared ones
        return wanted, options

    def _scheduler(self, params: GenerationParams) -> SchedulerMixin:
        try:
            self.entry.sampler(params.sampler)
        except KeyError:
            names = ", ".join(s.name for s in self.entry.samplers)
            raise InvalidRequest.for_field(
                "sampler", f"'{params.sampler}' is not offered; choose one of {names}"
            ) from None
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
    if data.dtype.kind in "iub":  # stored labels: no rounding pass over the volume
        return data.astype(np.int16, copy=False)
    return np.rint(data).astype(np.int16)
