"""Samplers against a problem with a known answer: a 1D Gaussian mixture and its exact ε-predictor.

For data x0 ~ Σ w_k N(μ_k, s_k²) the forward process gives x_t ~ Σ w_k N(√ᾱ μ_k, ᾱ s_k² + 1 − ᾱ), and the
optimal noise prediction is E[ε | x_t] = −√(1 − ᾱ) ∇ log p_t(x_t). Each sampler must then reproduce the mixture.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tumorsynth.models.ldm.sampler import reverse_process
from tumorsynth.models.ldm.schedulers import SAMPLERS, make_scheduler

WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
MEANS = torch.tensor([-1.5, 1.0], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5], dtype=torch.float64)
SPLIT = -0.5  # between the components: the fraction of samples below it estimates the first weight


def optimal_eps(alphas_cumprod: torch.Tensor):
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = alphas_cumprod[t].to(torch.float64).view(-1, *([1] * (x.ndim - 1)))[..., None]  # (B, 1, 1)
        xd = x.to(torch.float64)[..., None]  # (B, N, 1)
        m = ab.sqrt() * MEANS  # (B, 1, K)
        v = ab * STDS**2 + (1 - ab)
        log_r = torch.log(WEIGHTS) - 0.5 * torch.log(2 * math.pi * v) - 0.5 * (xd - m) ** 2 / v
        r = torch.softmax(log_r, dim=-1)
        score = (r * -(xd - m) / v).sum(-1)  # (B, N)
        return (-(1 - ab[..., 0]).sqrt() * score).to(x.dtype)

    return denoise


def true_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    return sum(float(w) * norm.cdf(x, float(m), float(s)) for w, m, s in zip(WEIGHTS, MEANS, STDS))


def draw(sampler: str, steps: int, n_chains: int = 4, per_chain: int = 1000, seed: int = 0) -> np.ndarray:
    scheduler = make_scheduler(sampler, steps)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n_chains)]
    out = reverse_process(optimal_eps(scheduler.alphas_cumprod), scheduler, (n_chains, per_chain), gens, "cpu")
    assert out.steps == steps
    return out.latents.double().numpy().ravel()


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    return {name: draw(name, steps) for name, steps in [("ddpm", 1000), ("ddim", 50), ("dpm++", 20)]}


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_sampler_reproduces_the_mixture(samples, sampler):
    x = samples[sampler]
    true_mean = float((WEIGHTS * MEANS).sum())
    true_std = float(((WEIGHTS * (STDS**2 + MEANS**2)).sum() - true_mean**2) ** 0.5)
    assert np.all(np.isfinite(x))
    assert abs(x.mean() - true_mean) < 0.06
    assert abs(x.std() - true_std) < 0.06
    assert abs((x < SPLIT).mean() - float(WEIGHTS[0])) < 0.03
    xs = np.sort(x)
    ks = np.max(np.abs(np.arange(1, len(xs) + 1) / len(xs) - true_cdf(xs)))
    assert ks < 0.04, f"{sampler}: Kolmogorov–Smirnov distance {ks:.3f} to the true mixture"


def test_samplers_agree_with_each_other(samples):
    qs = [0.1, 0.3, 0.5, 0.7, 0.9]
    ref = np.quantile(samples["ddpm"], qs)
    for name in ("ddim", "dpm++"):
        np.testing.assert_allclose(np.quantile(samples[name], qs), ref, atol=0.1)


def test_samplers_share_one_schedule():
    ref = make_scheduler("ddpm", 1000).alphas_cumprod
    for name, spec in SAMPLERS.items():
        sched = make_scheduler(name, spec.default_steps)
        torch.testing.assert_close(sched.alphas_cumprod, ref)
        assert len(sched.timesteps) == spec.default_steps
        assert int(sched.timesteps[0]) == 999


def test_make_scheduler_refuses_bad_requests():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("euler", 20)
    with pytest.raises(ValueError, match="5 to 200 steps"):
        make_scheduler("dpm++", 500)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 20), ("ddim", 10), ("dpm++", 10)])
def test_sample_i_does_not_depend_on_the_batch(sampler, steps):
    def run(n: int, seed: int) -> torch.Tensor:
        sched = make_scheduler(sampler, steps)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        return reverse_process(optimal_eps(sched.alphas_cumprod), sched, (n, 64), gens, "cpu").latents

    three = run(3, seed=7)
    torch.testing.assert_close(run(3, seed=7), three, rtol=0, atol=0)
    torch.testing.assert_close(run(1, seed=7)[0], three[0], rtol=0, atol=0)
    torch.testing.assert_close(run(1, seed=9)[0], three[2], rtol=0, atol=0)
    assert not torch.equal(three[0], three[1])


def test_progress_is_reported_after_every_step():
    sched = make_scheduler("ddim", 7)
    calls: list[tuple[int, int]] = []
    reverse_process(
        optimal_eps(sched.alphas_cumprod),
        sched,
        (2, 8),
        [torch.Generator(), torch.Generator()],
        "cpu",
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(i, 7) for i in range(1, 8)]


def test_reverse_process_wants_one_generator_per_sample():
    sched = make_scheduler("ddim", 5)
    with pytest.raises(ValueError, match="one generator per sample"):
        reverse_process(lambda z, t: z, sched, (3, 4), [torch.Generator()], "cpu")


def optimal_v(alphas_cumprod: torch.Tensor):
    """The same optimum as a v-predictor (Salimans & Ho 2022): v = √ᾱ ε − √(1 − ᾱ) x̂0."""
    eps_fn = optimal_eps(alphas_cumprod)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = alphas_cumprod[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps = eps_fn(x, t)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    return denoise


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 50), ("dpm++", 20)])
def test_v_prediction_checkpoints_sample_the_same_mixture(sampler, steps):
    """A checkpoint whose schedule says ``v_prediction`` (the demo LDM's) is sampled as one: every sampler reads the
    prediction type from the schedule and reproduces the mixture from the optimal v."""
    scheduler = make_scheduler(sampler, steps, {"prediction_type": "v_prediction"})
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    x = reverse_process(optimal_v(scheduler.alphas_cumprod), scheduler, (4, 1000), gens, "cpu").latents
    x = x.double().numpy().ravel()
    assert abs((x < SPLIT).mean() - float(WEIGHTS[0])) < 0.03
    xs = np.sort(x)
    ks = np.max(np.abs(np.arange(1, len(xs) + 1) / len(xs) - true_cdf(xs)))
    assert ks < 0.04, f"{sampler}: Kolmogorov–Smirnov distance {ks:.3f} to the true mixture"
    # and an ε-predictor read as v (a mismatched schedule) does not: the check has teeth
    scheduler = make_scheduler(sampler, steps, {"prediction_type": "v_prediction"})  # schedulers keep a step index
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    wrong = reverse_process(optimal_eps(scheduler.alphas_cumprod), scheduler, (4, 1000), gens, "cpu").latents
    ws = np.sort(wrong.double().numpy().ravel())
    assert np.max(np.abs(np.arange(1, len(ws) + 1) / len(ws) - true_cdf(ws))) > 0.1
