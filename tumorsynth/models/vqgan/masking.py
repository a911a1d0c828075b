"""Masking for stage-2 training: the poster's importance-guided hybrid masking, and MaskGIT's schedule.

Per sequence (all on the token grid, raster order):

1. *Schedule*: a masking ratio r = cos(π/2 · u), u ~ U(0, 1) (MaskGIT), and ⌈r·N⌉ positions drawn uniformly are
   replaced by [MASK]. This keeps the transformer fit for parallel decoding, which starts from an all-[MASK] grid.
2. *Important tokens*: the ``topk_ratio`` · N tokens of highest importance score and their face neighbours on the
   grid are replaced by [MASK] too (poster: "important tokens and their neighbouring tokens masked with [MASK]").
3. *Unimportant tokens*: of the tokens left visible, each is replaced with probability ``replace_prob`` by a code
   drawn uniformly from the codebook (poster: "unimportant tokens replaced by other random tokens in the codebook").

The loss is taken on every masked or replaced position. ``topk_ratio`` 0, 0.25 and 0.5 are the poster's ablation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Masked:
    inputs: torch.Tensor  # (B, N) tokens fed to the transformer: codes, random codes and [MASK]
    masked: torch.Tensor  # (B, N) bool, replaced by [MASK]
    replaced: torch.Tensor  # (B, N) bool, replaced by a random code
    important: torch.Tensor  # (B, N) bool, the top-k tokens and their neighbours

    @property
    def loss_positions(self) -> torch.Tensor:
        return self.masked | self.replaced


def cosine_ratio(u: torch.Tensor) -> torch.Tensor:
    """MaskGIT's schedule γ(u) = cos(πu/2): the fraction of tokens still masked at decoding progress u ∈ [0, 1]."""
    return torch.cos(u * math.pi / 2)


def dilate(region: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Grow a (B, N) boolean set on a raster grid by its face neighbours (6 in 3D), without wrapping at the edges."""
    vol = region.view(region.shape[0], *grid)
    out = vol.clone()
    for axis in range(1, vol.ndim):
        n = vol.shape[axis]
        if n < 2:
            continue
        out.narrow(axis, 1, n - 1).logical_or_(vol.narrow(axis, 0, n - 1))
        out.narrow(axis, 0, n - 1).logical_or_(vol.narrow(axis, 1, n - 1))
    return out.reshape(region.shape)


def top_important(importance: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, N) bool: the round(ratio·N) tokens of highest importance per sequence."""
    k = round(ratio * importance.shape[1])
    chosen = torch.zeros_like(importance, dtype=torch.bool)
    if k > 0:
        chosen.scatter_(1, importance.topk(k, dim=1).indices, True)
    return chosen


def hybrid_mask(
    tokens: torch.Tensor,
    importance: torch.Tensor,
    grid: Sequence[int],
    *,
    mask_id: int,
    num_codes: int,
    topk_ratio: float,
    replace_prob: float = 0.1,
    mask_ratio: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Masked:
    """Corrupt tokens (B, N) given importance scores (B, N); ``mask_ratio`` (B,) overrides the cosine draw."""
    if not 0 <= topk_ratio <= 1 or not 0 <= replace_prob <= 1:
        raise ValueError(f"topk_ratio and replace_prob must lie in [0, 1], got {topk_ratio} and {replace_prob}")
    b, n = tokens.shape
    if math.prod(grid) != n:
        raise ValueError(f"{n} tokens do not fill a {tuple(grid)} grid")
    dev = tokens.device
    if mask_ratio is None:
        mask_ratio = cosine_ratio(torch.rand(b, generator=generator, device=dev))
    count = torch.ceil(mask_ratio.to(dev) * n).long().clamp(0, n)  # (B,)
    ranks = torch.rand(b, n, generator=generator, device=dev).argsort(dim=1).argsort(dim=1)
    scheduled = ranks < count[:, None]
    important = dilate(top_important(importance, topk_ratio), grid)
    masked = scheduled | important
    replaced = ~masked & (torch.rand(b, n, generator=generator, device=dev) < replace_prob)
    random_codes = torch.randint(0, num_codes, (b, n), generator=generator, device=dev)
    inputs = torch.where(replaced, random_codes, tokens)
    inputs = torch.where(masked, torch.full_like(tokens, mask_id), inputs)
    return Masked(inputs, masked, replaced, important)


def random_replace(
    tokens: torch.Tensor, num_codes: int, prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The paper's masked-token modelling for the autoregressive transformer: each input token is replaced with
    probability ``prob`` by a random code; the targets stay the true tokens."""
    where = torch.rand(tokens.shape, generator=generator, device=tokens.device) < prob
    return torch.where(
        where, torch.randint(0, num_codes, tokens.shape, generator=generator, device=tokens.device), tokens
    )
