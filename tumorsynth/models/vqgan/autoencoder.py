"""Stage 1: the VQGAN autoencoder (Zhou et al. 2023, after Esser et al. 2021), dimension-generic.

Encoder: a stem convolution, then one MONAI ``ResidualUnit`` of stride 2 per level after the first (each level
halves every side: 128³ → 8³ takes five levels), a residual unit at the bottom and a 1×1 projection to the code
dimension. Decoder: the mirror image, upsampling by nearest-neighbour interpolation followed by a 3×3 convolution
(taming-transformers' ``Upsample``; a stride-2 transposed convolution of kernel 3 covers alternate output voxels
with different numbers of kernel taps and paints a checkerboard, Odena et al. 2016), except that the
full-resolution level has no residual units (its 3D convolutions would be most of the compute, on a CPU by far: the
backward pass of a stride-1 ``conv3d`` at 32³ costs seconds there). GroupNorm and SiLU throughout.

The importance head (the poster's "importance score map") reads the encoder output, detached so that it never
shapes the codes, and scores each latent token in (0, 1). The poster does not give its training target; ours is
the part of the reconstruction error that falls in the token's receptive field (the L1 error average-pooled to the
token grid and divided by its per-volume maximum): a token scores high where the autoencoder finds the volume hard
to reproduce, which in tumour ROIs is the tumour and its boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from .quantizer import Quantized, VectorQuantizer

ACT = "SWISH"


def _norm(groups: int) -> tuple:
    return ("GROUP", {"num_groups": groups})


def _res_units(spatial_dims: int, channels: int, count: int, groups: int) -> list[nn.Module]:
    return [
        ResidualUnit(spatial_dims, channels, channels, subunits=2, act=ACT, norm=_norm(groups)) for _ in range(count)
    ]


class Encoder(nn.Module):
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        embed_dim: int,
        num_res_units: int,
        norm_num_groups: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [Convolution(spatial_dims, in_channels, channels[0], kernel_size=3, conv_only=True)]
        for c_in, c_out in pairwise(channels):
            layers.append(
                ResidualUnit(spatial_dims, c_in, c_out, strides=2, subunits=2, act=ACT, norm=_norm(norm_num_groups))
            )
            layers += _res_units(spatial_dims, c_out, num_res_units - 1, norm_num_groups)
        layers += _res_units(spatial_dims, channels[-1], 1, norm_num_groups)
        layers.append(Convolution(spatial_dims, channels[-1], embed_dim, kernel_size=1, conv_only=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, D, X/f, Y/f, Z/f)


class Decoder(nn.Module):
    def __init__(
        self,
        spatial_dims: int,
        out_channels: int,
        channels: Sequence[int],
        embed_dim: int,
        num_res_units: int,
        norm_num_groups: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [Convolution(spatial_dims, embed_dim, channels[-1], kernel_size=3, conv_only=True)]
        layers += _res_units(spatial_dims, channels[-1], 1, norm_num_groups)
        for level, (c_in, c_out) in enumerate(zip(channels[:0:-1], channels[-2::-1]), start=1):
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers.append(Convolution(spatial_dims, c_in, c_out, kernel_size=3, act=ACT, norm=_norm(norm_num_groups)))
            if level < len(channels) - 1:  # none at full resolution, where 3D convolutions cost the most
                layers += _res_units(spatial_dims, c_out, num_res_units, norm_num_groups)
        layers.append(Convolution(spatial_dims, channels[0], out_channels, kernel_size=3, conv_only=True))
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the output convolution (taming-transformers' adaptive adversarial weight reads its grads)."""
        return self.net[-1].get_parameter("conv.weight")  # MONAI's Convolution adds ``conv`` by name

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, C, X, Y, Z)


@dataclass
class VQOutput:
    recon: torch.Tensor  # (B, C, X, Y, Z)
    z_e: torch.Tensor  # (B, D, x, y, z) encoder output
    quantized: Quantized
    importance_logits: torch.Tensor  # (B, x, y, z)


class VQAutoencoder(nn.Module):
    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
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
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels needs at least two levels (one downsampling), got {list(channels)}")
        if any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"every entry of channels {list(channels)} must divide by norm_num_groups {norm_num_groups}"
            )
        self.spatial_dims = spatial_dims
        self.downsampling = 2 ** (len(channels) - 1)
        self.encoder = Encoder(spatial_dims, in_channels, channels, embed_dim, num_res_units, norm_num_groups)
        self.quantizer = VectorQuantizer(
            num_codes,
            embed_dim,
            code_dim=code_dim,
            normalise=normalise_codes,
            commitment=commitment,
            ema=ema,
            decay=ema_decay,
            restart_threshold=restart_threshold,
        )
        self.decoder = Decoder(spatial_dims, in_channels, channels, embed_dim, num_res_units, norm_num_groups)
        self.importance_head = nn.Sequential(
            Convolution(spatial_dims, embed_dim, embed_dim, kernel_size=1, act=ACT, norm=None),
            Convolution(spatial_dims, embed_dim, 1, kernel_size=1, conv_only=True),
        )

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        if len(image_shape) != self.spatial_dims or any(n % self.downsampling for n in image_shape):
            raise ValueError(
                f"image grid {tuple(image_shape)} must have {self.spatial_dims} sides divisible by "
                f"{self.downsampling} (the encoder's downsampling)"
            )
        return tuple(n // self.downsampling for n in image_shape)

    def forward(self, x: torch.Tensor) -> VQOutput:
        z_e = self.encoder(x)  # (B, D, x, y, z)
        q = self.quantizer(z_e)
        recon = self.decoder(q.z_q)  # (B, C, X, Y, Z)
        return VQOutput(recon, z_e, q, self.importance_head(z_e.detach())[:, 0])

    def tokenize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, X, Y, Z) → code indices (B, x, y, z) and importance scores in (0, 1) (B, x, y, z)."""
        z_e = self.encoder(x)
        return self.quantizer.encode(z_e), torch.sigmoid(self.importance_head(z_e)[:, 0])

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, x, y, z) → images (B, C, X, Y, Z)."""
        return self.decoder(self.quantizer.lookup(indices))


def importance_target(recon: torch.Tensor, x: torch.Tensor, latent_shape: Sequence[int]) -> torch.Tensor:
    """Per-token reconstruction difficulty in [0, 1] (B, x, y, z): the L1 error pooled to the token grid, per-volume
    max-normalised."""
    err = (recon.detach() - x).abs().mean(dim=1, keepdim=True)  # (B, 1, X, Y, Z)
    if err.ndim == 5:
        x_, y_, z_ = latent_shape
        pooled = F.adaptive_avg_pool3d(err, (x_, y_, z_))
    else:
        x_, y_ = latent_shape
        pooled = F.adaptive_avg_pool2d(err, (x_, y_))
    pooled = pooled[:, 0]
    peak = pooled.flatten(1).amax(dim=1).clamp_min(1e-8)
    return pooled / peak.view(-1, *([1] * (pooled.ndim - 1)))
