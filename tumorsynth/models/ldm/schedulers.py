"""Samplers as diffusers schedulers that share one noise schedule.

The network is trained once on the paper's discrete-time schedule (Ho et al. 2020: 1000 steps, betas linear from
1e-4 to 0.02) with ε-prediction; every sampler below reads the same ``alphas_cumprod`` and differs only in how it
steps backwards:

- ``ddpm``: ancestral sampling (stochastic), ``DDPMScheduler``;
- ``ddim``: deterministic DDIM (η = 0), ``DDIMScheduler``;
- ``dpm++``: DPM-Solver++ (2M), ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)``.

``clip_sample`` is off: latents are not bounded to [-1, 1].
"""

from __future__ import annotations

# From their modules rather than the package: diffusers' __init__ also names dummy classes (for installs without
# torch) under TYPE_CHECKING, and a type checker would read those.
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..registry import SamplerSpec

SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",  # start every sampler at t = T - 1, i.e. from (almost) pure noise
}

SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec("ddpm", default_steps=1000, min_steps=10, max_steps=1000),
    "ddim": SamplerSpec("ddim", default_steps=50, min_steps=5, max_steps=1000),
    "dpm++": SamplerSpec("dpm++", default_steps=15, min_steps=5, max_steps=200),
}


def sampler_specs() -> list[dict]:
    """The ``samplers`` list of a config.json."""
    return [
        {"name": s.name, "default_steps": s.default_steps, "min_steps": s.min_steps, "max_steps": s.max_steps}
        for s in SAMPLERS.values()
    ]


def make_scheduler(name: str, steps: int, schedule_cfg: dict | None = None) -> SchedulerMixin:
    """A scheduler for sampler ``name`` over the schedule ``schedule_cfg``, with ``set_timesteps(steps)`` done."""
    spec = SAMPLERS.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
    if not spec.min_steps <= steps <= spec.max_steps:
        raise ValueError(f"sampler '{name}' takes {spec.min_steps} to {spec.max_steps} steps, got {steps}")
    cfg = SCHEDULE | dict(schedule_cfg or {})
    scheduler: DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler
    if name == "ddpm":
        scheduler = DDPMScheduler(**cfg, variance_type="fixed_small", clip_sample=False)
    elif name == "ddim":
        scheduler = DDIMScheduler(**cfg, clip_sample=False, set_alpha_to_one=True)
    else:
        scheduler = DPMSolverMultistepScheduler(**cfg, algorithm_type="dpmsolver++", solver_order=2)
    scheduler.set_timesteps(steps)
    return scheduler
