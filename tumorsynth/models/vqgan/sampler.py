"""Token samplers: MaskGIT parallel decoding and raster-order autoregressive decoding, with a progress callback.

Every random draw of sample ``i`` (the Gumbel noise that samples its tokens and, for MaskGIT, the noise on its
confidences) comes from ``generators[i]`` alone, so sample ``i`` of a seed is the same whether it is drawn alone or
in a batch; the batch still goes through the transformer in one forward pass per step. Sampling a token as
``argmax(logits / T + Gumbel)`` is drawing it from ``softmax(logits / T)``.

``progress(done, total)`` is called after every step and may raise (``JobCanceled``): the loop stops there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..base import ProgressFn
from .transformer import TokenTransformer

# tokens (B, N) with [MASK] → logits (B, N, K)
LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Sampled:
    tokens: torch.Tensor  # (B, N) codes
    steps: int
    logits: torch.Tensor | None = None  # (B, N, K) the logits each token was drawn from (AR, when kept)


def gumbel(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise (B, *shape), row i from ``generators[i]``."""
    u = torch.stack([torch.rand(shape, generator=g, device=device) for g in generators])
    return -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))


def draw(logits: torch.Tensor, temperature: float, noise: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Tokens from ``softmax(logits / temperature)`` restricted to the ``top_k`` best; temperature 0 is argmax."""
    logits = logits.float()
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature <= 0:
        return logits.argmax(dim=-1)
    return (logits / temperature + noise).argmax(dim=-1)


def guided(
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], class_labels: torch.Tensor, guidance: float
) -> LogitsFn:
    """Classifier-free guidance: (1 + w)·cond − w·uncond, with the unconditional pass batched alongside."""
    if guidance == 0:
        return lambda tokens: logits_fn(tokens, class_labels)
    null = torch.zeros_like(class_labels)

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        both = logits_fn(torch.cat([tokens, tokens]), torch.cat([class_labels, null])).float()
        cond, uncond = both.chunk(2)
        return (1 + guidance) * cond - guidance * uncond

    return fn


def maskgit_decode(
    logits_fn: LogitsFn,
    num_tokens: int,
    mask_id: int,
    steps: int,
    generators: list[torch.Generator],
    device: str | torch.device,
    progress: ProgressFn | None = None,
    *,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
) -> Sampled:
    """MaskGIT (Chang et al. 2022): start all-[MASK]; each step samples every masked token, keeps the most confident
    and re-masks the rest, so that cos(π/2 · s/steps) of the tokens are still masked after step s and none after the
    last. Confidence is the sampled token's log-probability plus Gumbel noise whose temperature anneals linearly
    from ``choice_temperature`` to 0."""
    if steps < 1 or steps > num_tokens:
        raise ValueError(f"steps must lie in 1..{num_tokens} (one token at least per step), got {steps}")
    device = torch.device(device)
    b = len(generators)
    tokens = torch.full((b, num_tokens), mask_id, dtype=torch.long, device=device)
    for step in range(1, steps + 1):
        logits = logits_fn(tokens).float()  # (B, N, K)
        masked = tokens == mask_id  # (B, N), the same count in every row
        sampled = draw(logits, temperature, gumbel(generators, tuple(logits.shape[1:]), device))  # (B, N)
        confidence = torch.log_softmax(logits, dim=-1).gather(-1, sampled[..., None])[..., 0]  # (B, N)
        sampled = torch.where(masked, sampled, tokens)
        still = int(masked[0].sum())
        keep_masked = min(math.floor(num_tokens * math.cos(math.pi / 2 * step / steps)), still - 1)
        keep_masked = max(keep_masked, 0) if step < steps else 0
        annealed = choice_temperature * (1 - step / steps)
        confidence = confidence + annealed * gumbel(generators, (num_tokens,), device)
        confidence = confidence.masked_fill(~masked, float("inf"))
        if keep_masked:
            remask = confidence.argsort(dim=1)[:, :keep_masked]  # (B, keep_masked) least confident
            sampled = sampled.scatter(1, remask, mask_id)
        tokens = sampled
        if progress is not None:
            progress(step, steps)
    return Sampled(tokens=tokens, steps=steps)


def ar_decode(
    model: TokenTransformer,
    class_labels: torch.Tensor,
    generators: list[torch.Generator],
    progress: ProgressFn | None = None,
    *,
    use_cache: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    guidance: float = 0.0,
    keep_logits: bool = False,
) -> Sampled:
    """Raster-order decoding of ``model.num_tokens`` tokens, one step per token. ``use_cache=False`` recomputes the
    whole prefix at each step (the reference no-cache mode); both draw the same noise, so they give the same tokens
    up to floating-point ties."""
    if not model.causal:
        raise ValueError("autoregressive decoding needs a transformer built with causal=True")
    device = class_labels.device
    b, n = len(generators), model.num_tokens
    labels = class_labels if guidance == 0 else torch.cat([class_labels, torch.zeros_like(class_labels)])
    cache = model.new_cache() if use_cache else None
    tokens = torch.empty((b, 0), dtype=torch.long, device=device)
    kept = []
    for i in range(n):
        rows = tokens if guidance == 0 else torch.cat([tokens, tokens])
        if cache is not None:
            logits = model.step(rows[:, -1] if i else None, labels, cache)  # (B', K)
        else:
            logits = model.next_logits(rows, labels)
        logits = logits.float()
        if guidance != 0:
            cond, uncond = logits.chunk(2)
            logits = (1 + guidance) * cond - guidance * uncond
        nxt = draw(logits, temperature, gumbel(generators, (logits.shape[-1],), device), top_k)  # (B,)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if keep_logits:
            kept.append(logits)
        if progress is not None:
            progress(i + 1, n)
    return Sampled(tokens=tokens, steps=n, logits=torch.stack(kept, dim=1) if keep_logits else None)
