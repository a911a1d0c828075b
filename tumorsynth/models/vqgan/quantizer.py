"""The codebook: nearest-code vector quantisation with EMA or straight-through updates and dead-code restarts.

- ``ema=True`` (VQ-VAE-2, the taming-transformers default for 3D medical VQGANs): the codes follow exponential moving
  averages of the encoder outputs assigned to them; the only loss is the commitment term β‖z_e − sg(z_q)‖².
- ``ema=False``: the codes are parameters trained through the codebook loss ‖sg(z_e) − z_q‖² plus the same
  commitment term.

Either way the decoder's gradient reaches the encoder through the straight-through estimator z_e + sg(z_q − z_e).

Dead codes: ``usage`` is an EMA (decay ``usage_decay``) of how many encoder outputs each code received per batch.
During training a code whose usage falls below ``restart_threshold`` is moved onto a random encoder output of the
current batch, which keeps the codebook from collapsing onto a few entries (Dhariwal et al., Jukebox 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Quantized:
    z_q: torch.Tensor  # (B, D, *spatial), straight-through: gradients flow to z_e
    indices: torch.Tensor  # (B, *spatial) long
    loss: torch.Tensor  # commitment (+ codebook when not EMA)
    perplexity: torch.Tensor  # exp(entropy) of the batch's code histogram


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        commitment: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        usage_decay: float = 0.9,
        restart_threshold: float = 0.03,
    ) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ValueError(f"need at least 2 codes of dimension >= 1, got num_codes={num_codes}, dim={dim}")
        if not 0 < decay < 1 or not 0 < usage_decay < 1:
            raise ValueError(f"decay and usage_decay must lie in (0, 1), got {decay} and {usage_decay}")
        self.num_codes, self.dim = num_codes, dim
        self.commitment, self.ema, self.decay, self.eps = commitment, ema, decay, eps
        self.usage_decay, self.restart_threshold = usage_decay, restart_threshold
        self.codebook = nn.Embedding(num_codes, dim)
        self.codebook.weight.requires_grad_(not ema)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", torch.zeros(num_codes, dim))
        self.register_buffer("usage", torch.ones(num_codes))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Codes uniform in ±1/K (VQ-VAE); the EMA sums start at the codes so that an unused code stays put."""
        with torch.no_grad():
            self.codebook.weight.uniform_(-1.0 / self.num_codes, 1.0 / self.num_codes)
            self.ema_sum.copy_(self.codebook.weight)
            self.ema_count.fill_(1.0)
            self.usage.fill_(1.0)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` (M, D)."""
        w = self.codebook.weight
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ w.t() + w.pow(2).sum(1)[None]  # (M, K)
        return d.argmin(dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for indices (B, *spatial) as a channels-first tensor (B, D, *spatial)."""
        return self.codebook(indices).movedim(-1, 1)

    def forward(self, z_e: torch.Tensor) -> Quantized:
        flat = z_e.movedim(1, -1).reshape(-1, self.dim)  # (M, D)
        indices = self.nearest(flat.detach())
        counts = torch.bincount(indices, minlength=self.num_codes).to(flat.dtype)  # (K,)
        if self.training:
            self._update(flat.detach(), indices, counts)
        z_q = self.lookup(indices.view(z_e.shape[0], *z_e.shape[2:]))  # (B, D, *spatial)
        loss = self.commitment * F.mse_loss(z_e, z_q.detach())
        if not self.ema:
            loss = loss + F.mse_loss(z_q, z_e.detach())
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return Quantized(z_e + (z_q - z_e).detach(), indices.view(z_e.shape[0], *z_e.shape[2:]), loss, perplexity)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        if self.ema:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)  # (K, D)
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace smoothing
            self.codebook.weight.copy_(self.ema_sum / smoothed[:, None])
        if self.restart_threshold > 0:
            self.restart_dead_codes(flat)

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor) -> int:
        """Move every code whose usage is below the threshold onto a random row of ``flat`` (M, D); return how many.

        Draws from torch's global RNG (the trainer seeds it per epoch, so resumed runs restart the same codes).
        """
        dead = torch.nonzero(self.usage < self.restart_threshold).flatten()
        if dead.numel() == 0 or flat.shape[0] == 0:
            return 0
        picks = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        new = flat[picks].to(self.codebook.weight.dtype)
        self.codebook.weight[dead] = new
        self.ema_sum[dead] = new
        self.ema_count[dead] = 1.0
        self.usage[dead] = 1.0
        return int(dead.numel())
