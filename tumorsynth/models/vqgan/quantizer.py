"""The codebook: nearest-code vector quantisation with EMA or straight-through updates and dead-code restarts.

- ``ema=True`` (VQ-VAE-2, the taming-transformers default for 3D medical VQGANs): the codes follow exponential moving
  averages of the encoder outputs assigned to them; the only loss is the commitment term β‖z_e − sg(z_q)‖².
- ``ema=False``: the codes are parameters trained through the codebook loss ‖sg(z_e) − z_q‖² plus the same
  commitment term.

Either way the decoder's gradient reaches the encoder through the straight-through estimator z_e + sg(z_q − z_e).

Three guards against codebook collapse, each from a published VQ model (all on by default; ``code_dim=None,
normalise=False, data_init=False`` is the plain VQ-VAE codebook):

- factorised, l2-normalised codes (Yu et al., ViT-VQGAN 2022): a linear map takes the encoder's ``dim`` channels to
  ``code_dim`` (e.g. 8), both the projected vectors and the codes are l2-normalised, so the nearest code is the one of
  highest cosine similarity, and a second linear map takes the code back to ``dim`` for the decoder. Distances then
  live on the unit sphere whatever scale the encoder drifts to: a codebook can no longer sit at a scale where one
  code is nearest to everything.
- initialisation from data (Dhariwal et al., Jukebox 2020): on the first training batch the codes are set to random
  encoder outputs (VQ-VAE's uniform ±1/K would put every code near the origin, far from the encoder outputs).
- dead-code restarts (Jukebox): ``usage`` is an EMA (decay ``usage_decay``) of how many encoder outputs each code
  received per batch. During training a code whose usage falls below ``restart_threshold`` × the uniform share
  (usage summed over codes / K) is moved onto an encoder output of the current batch, drawn with probability
  proportional to its squared quantisation error (k-means++), so that the restarted codes go where the codebook
  represents the data worst.
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
    # Buffers (register_buffer in __init__), declared so that they read as tensors rather than "Tensor | Module".
    ema_count: torch.Tensor  # (K,)
    ema_sum: torch.Tensor  # (K, code_dim)
    usage: torch.Tensor  # (K,)
    initialised: torch.Tensor  # () bool

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        code_dim: int | None = None,
        normalise: bool = True,
        data_init: bool = True,
        commitment: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        usage_decay: float = 0.9,
        restart_threshold: float = 0.03,
    ) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1 or (code_dim is not None and code_dim < 1):
            raise ValueError(
                f"need at least 2 codes of dimension >= 1, got num_codes={num_codes}, dim={dim}, code_dim={code_dim}"
            )
        if not 0 < decay < 1 or not 0 < usage_decay < 1:
            raise ValueError(f"decay and usage_decay must lie in (0, 1), got {decay} and {usage_decay}")
        if restart_threshold < 0:
            raise ValueError(
                f"restart_threshold must be >= 0 (a fraction of the uniform share), got {restart_threshold}"
            )
        self.num_codes, self.dim = num_codes, dim
        self.code_dim = dim if code_dim is None else code_dim
        self.normalise, self.data_init = normalise, data_init
        self.commitment, self.ema, self.decay, self.eps = commitment, ema, decay, eps
        self.usage_decay, self.restart_threshold = usage_decay, restart_threshold
        # factorised codes: dim → code_dim → dim (identity when code_dim is None)
        self.project_in = nn.Linear(dim, self.code_dim) if code_dim is not None else nn.Identity()
        self.project_out = nn.Linear(self.code_dim, dim) if code_dim is not None else nn.Identity()
        self.codebook = nn.Embedding(num_codes, self.code_dim)
        self.codebook.weight.requires_grad_(not ema)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", torch.zeros(num_codes, self.code_dim))
        self.register_buffer("usage", torch.ones(num_codes))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Codes uniform in ±1/K (VQ-VAE; replaced by encoder outputs on the first training batch when
        ``data_init``); the EMA sums start at the codes so that an unused code stays put."""
        with torch.no_grad():
            self.codebook.weight.uniform_(-1.0 / self.num_codes, 1.0 / self.num_codes)
            if self.normalise:
                self.codebook.weight.copy_(F.normalize(self.codebook.weight, dim=1))
            self.ema_sum.copy_(self.codebook.weight)
            self.ema_count.fill_(1.0)
            self.usage.fill_(1.0)
            self.initialised.fill_(not self.data_init)

    @torch.no_grad()
    def init_from_data(self, flat: torch.Tensor) -> None:
        """Codes := random rows of ``flat`` (M, code_dim), with replacement only when M < K (Jukebox)."""
        picks = torch.randperm(flat.shape[0], device=flat.device)[: self.num_codes]
        if picks.numel() < self.num_codes:
            picks = torch.cat(
                [picks, torch.randint(0, flat.shape[0], (self.num_codes - picks.numel(),), device=flat.device)]
            )
        codes = self._norm(flat[picks] + 1e-3 * torch.randn_like(flat[picks]))  # break ties between duplicates
        self.codebook.weight.copy_(codes)
        self.ema_sum.copy_(codes)
        self.ema_count.fill_(1.0)
        self.usage.fill_(flat.shape[0] / self.num_codes)
        self.initialised.fill_(True)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalise else x

    def codes(self) -> torch.Tensor:
        """The codebook in code space (K, code_dim), l2-normalised when ``normalise``."""
        return self._norm(self.codebook.weight)

    def project(self, z_e: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, D, *spatial) → the vectors that are quantised (M, code_dim)."""
        return self._norm(self.project_in(z_e.movedim(1, -1).reshape(-1, self.dim)))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` (M, code_dim), already projected."""
        w = self.codes()
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ w.t() + w.pow(2).sum(1)[None]  # (M, K)
        return d.argmin(dim=1)

    def encode(self, z_e: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, D, *spatial) → code indices (B, *spatial)."""
        return self.nearest(self.project(z_e)).view(z_e.shape[0], *z_e.shape[2:])

    def _to_channels_first(self, flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(M, D) rows → (B, D, *spatial) shaped as ``like`` (B, ·, *spatial)."""
        return flat.view(like.shape[0], *like.shape[2:], -1).movedim(-1, 1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for indices (B, *spatial) as a channels-first tensor (B, D, *spatial)."""
        return self.project_out(F.embedding(indices, self.codes())).movedim(-1, 1)

    def forward(self, z_e: torch.Tensor) -> Quantized:
        flat = self.project(z_e)  # (M, code_dim)
        if self.training and not bool(self.initialised):
            self.init_from_data(flat.detach())
        indices = self.nearest(flat.detach())
        counts = torch.bincount(indices, minlength=self.num_codes).to(flat.dtype)  # (K,)
        if self.training:
            self._update(flat.detach(), indices, counts)
        codes = F.embedding(indices, self.codes())  # (M, code_dim)
        loss = self.commitment * F.mse_loss(flat, codes.detach())
        if not self.ema:
            loss = loss + F.mse_loss(codes, flat.detach())
        straight = flat + (codes - flat).detach()  # (M, code_dim)
        z_q = self._to_channels_first(self.project_out(straight), z_e)  # (B, D, *spatial)
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return Quantized(z_q, indices.view(z_e.shape[0], *z_e.shape[2:]), loss, perplexity)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        if self.ema:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat)  # (K, code_dim)
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace smoothing
            self.codebook.weight.copy_(self._norm(self.ema_sum / smoothed[:, None]))
        if self.restart_threshold > 0:
            self.restart_dead_codes(flat)

    def alive(self) -> torch.Tensor:
        """(K,) bool: codes whose usage is at least ``restart_threshold`` × the uniform share."""
        return self.usage >= self.restart_threshold * self.usage.sum() / self.num_codes

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor) -> int:
        """Move every dead code onto a row of ``flat`` (M, code_dim) drawn with probability ∝ its squared distance
        to its nearest code; return how many.

        Draws from torch's global RNG (the trainer seeds it per epoch, so resumed runs restart the same codes).
        """
        dead = torch.nonzero(~self.alive()).flatten()
        if dead.numel() == 0 or flat.shape[0] == 0:
            return 0
        w = self.codes()
        err = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ w.t() + w.pow(2).sum(1)[None]).amin(1).clamp_min(0)
        weights = err + 1e-12 if float(err.sum()) > 0 else torch.ones_like(err)
        picks = torch.multinomial(weights, dead.numel(), replacement=dead.numel() > flat.shape[0])
        new = flat[picks].to(self.codebook.weight.dtype)
        share = self.usage.sum() / self.num_codes
        self.codebook.weight[dead] = new
        self.ema_sum[dead] = new
        self.ema_count[dead] = 1.0
        self.usage[dead] = share
        return int(dead.numel())
