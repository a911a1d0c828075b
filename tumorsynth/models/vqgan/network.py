"""The class-conditional tumour-ROI VQGAN (Zhou et al. 2023; the poster's importance-guided masked transformer).

One module, one checkpoint, three parts:

- ``vqgan``: encoder, codebook (EMA or straight-through; factorised l2-normalised codes, initialised from data,
  dead-code restarts: ``quantizer.py``), decoder and the importance head
  (``autoencoder.py``), trained in stage 1 with a MONAI ``PatchDiscriminator`` that is not part of the checkpoint;
- ``maskgit``: the bidirectional ``TokenTransformer`` trained by importance-guided hybrid masking (``masking.py``),
  served by the ``maskgit`` sampler (the default);
- ``ar``: the same ``TokenTransformer`` class built with ``causal=True``, trained in the same stage-2 run on
  next-token prediction with the paper's random-token input corruption, served by the ``ar`` sampler (raster order,
  KV cache). Two sets of weights rather than one bidirectional network with the future masked: a network trained
  bidirectionally has never learnt to predict from a prefix alone, so reusing it causally would not be the paper's
  model. ``ar_depth=0`` leaves the AR transformer out (the checkpoint then offers ``maskgit`` only).

Constructor arguments are plain JSON values, stored as ``config["network"]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .autoencoder import VQAutoencoder
from .transformer import TokenTransformer


class ClassConditionalVQGAN(nn.Module):
    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        grid: Sequence[int] = (128, 128, 128),
        channels: Sequence[int] = (32, 64, 128, 128, 256),
        num_res_units: int = 1,
        norm_num_groups: int = 8,
        embed_dim: int = 64,
        num_codes: int = 1024,
        code_dim: int | None = 8,
        normalise_codes: bool = True,
        commitment: float = 0.25,
        ema: bool = True,
        ema_decay: float = 0.99,
        restart_threshold: float = 0.1,
        num_classes: int = 2,
        transformer_dim: int = 512,
        transformer_depth: int = 8,
        transformer_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        ar_depth: int | None = None,
    ) -> None:
        super().__init__()
        self.grid = tuple(int(n) for n in grid)
        self.num_codes, self.num_classes = num_codes, num_classes
        self.vqgan = VQAutoencoder(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            channels=channels,
            num_res_units=num_res_units,
            norm_num_groups=norm_num_groups,
            embed_dim=embed_dim,
            num_codes=num_codes,
            code_dim=code_dim,
            normalise_codes=normalise_codes,
            commitment=commitment,
            ema=ema,
            ema_decay=ema_decay,
            restart_threshold=restart_threshold,
        )
        self.latent_shape = self.vqgan.latent_shape(self.grid)
        self.num_tokens = math.prod(self.latent_shape)
        shared: dict[str, Any] = {
            "num_codes": num_codes,
            "num_tokens": self.num_tokens,
            "num_classes": num_classes,
            "dim": transformer_dim,
            "heads": transformer_heads,
            "mlp_ratio": mlp_ratio,
            "dropout": dropout,
        }
        self.maskgit = TokenTransformer(depth=transformer_depth, causal=False, **shared)
        ar_depth = transformer_depth if ar_depth is None else ar_depth
        self.ar = TokenTransformer(depth=ar_depth, causal=True, **shared) if ar_depth > 0 else None

    @property
    def mask_id(self) -> int:
        return self.maskgit.mask_id

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ROIs (B, C, *grid) → raster-ordered tokens (B, N) and importance scores (B, N)."""
        indices, importance = self.vqgan.tokenize(x)
        return indices.flatten(1), importance.flatten(1)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raster-ordered tokens (B, N) → ROIs (B, C, *grid)."""
        return self.vqgan.decode_indices(tokens.view(tokens.shape[0], *self.latent_shape))
