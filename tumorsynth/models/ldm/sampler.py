"""The reverse-diffusion loop: a function of (denoiser, scheduler, shape, generators) with a progress callback.

Every random draw of sample ``i`` (its initial noise and, for DDPM, its noise at each step) comes from
``generators[i]`` alone, so sample ``i`` of a seed is the same whether it is drawn alone or in a batch: diffusers'
``randn_tensor`` draws one batch row per generator when given a list, and ``DDPMScheduler.step`` passes its
``generator`` argument to it. The batch still goes through the network in one forward pass per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..base import ProgressFn

# (z_t (B, ...), t (B,)) -> predicted noise ε (B, ...)
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Sampled:
    latents: torch.Tensor  # z_0, (B, ...)
    steps: int  # denoising steps taken


def reverse_process(
    denoise_fn: DenoiseFn,
    scheduler,
    shape: Sequence[int],
    generators: list[torch.Generator],
    device: str | torch.device,
    progress: ProgressFn | None = None,
) -> Sampled:
    """Denoise pure noise of ``shape`` (batch first) along ``scheduler.timesteps`` down to z_0.

    ``progress(done, total)`` is called after each step and may raise (e.g. ``JobCanceled``) to stop at that step.
    """
    shape = tuple(int(n) for n in shape)
    if len(generators) != shape[0]:
        raise ValueError(f"one generator per sample is needed: {len(generators)} generators for a batch of {shape[0]}")
    device = torch.device(device)
    z = randn_tensor(shape, generator=list(generators), device=device, dtype=torch.float32)
    z = z * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    total = len(timesteps)
    for done, t in enumerate(timesteps, start=1):
        t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        eps = denoise_fn(scheduler.scale_model_input(z, t), t_batch)
        z = scheduler.step(eps, t, z, generator=list(generators)).prev_sample
        if progress is not None:
            progress(done, total)
    return Sampled(latents=z, steps=total)
