"""The tumour-aware vision transformer (TA-ViT, arXiv 2409.01622) and its segmentation predictor.

One module holds both networks, so that one checkpoint does:

- ``segmenter``: T1 (+ FLAIR) slice → logits of the four BraTS 2023 labels (background, necrotic core, oedema,
  enhancing tumour). The paper's MPR-ViT is not specified closely enough to rebuild; in its place MONAI's residual
  ``UNet`` (Kerfoot et al. 2018), a well-tested 2D segmentation network that trains in minutes on a CPU.
  SwinUNETR/UNETR were not chosen: they need sides divisible by 32 (240 is not) and are far slower on a CPU.
- ``tavit``: T1 (+ FLAIR) slice and tumour regions (WT, TC, ET) → T1C slice. An encoder of residual blocks, each
  halving the side; a bottleneck of a residual conv block and ViT blocks whose adaLN-Zero modulation is computed from
  the feature tokens summed with the latent segmentation tokens; a decoder of residual blocks after transposed
  convolutions. The latent segmentation comes from a small strided-conv encoder of the regions (the paper compresses
  its segmentation to 30×30×256 tokens), so a predicted segmentation and a user's mask reach the transformer the
  same way. The decoder adds the encoder's features of the same resolution (additive skips): our choice, the paper
  does not say; it keeps the 8× bottleneck from blurring anatomy that T1C shares with T1.

Two departures from the paper, both ours (``residual`` and ``slice_context``, off by default, on in the presets):

- ``residual``: TA-ViT predicts T1C − T1 and the T1 (the first input channel) is added back, so healthy tissue is
  right from the first step and the network spends its capacity on enhancement; the runner adds the residual to the
  T1 at the input's own resolution, so the slice grid's resampling no longer blurs the anatomy.
- ``slice_context``: each slice comes with ``k`` neighbours either side as extra channels (2.5D, centre first,
  ``slices.with_context``), so neighbouring outputs agree and a coronal or sagittal view shows no slice streaks.
- ``regions_in_input``: the tumour regions also enter TA-ViT's encoder as input channels at full resolution. Through
  the latent condition alone (one token per 8×8 voxels) a rim a few voxels thick cannot be drawn: trained with L1,
  the demo learnt to predict no enhancement at all. The latent adaLN-Zero conditioning is kept.

Constructor arguments are plain JSON values: they are stored as ``config["network"]`` and the network is rebuilt
with ``TumourAwareSynthesis(**config["network"])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from monai.networks.blocks import Convolution, MLPBlock, ResidualUnit
from monai.networks.nets import UNet
from torch import nn

from ..nn.attention import attention

NUM_LABELS = 4  # background and the BraTS 2023 labels 1 (necrotic core), 2 (oedema), 3 (enhancing)
NUM_REGIONS = 3  # nested WT, TC, ET, as imaging.labels.to_regions


def regions_from_probabilities(p: torch.Tensor) -> torch.Tensor:
    """Label probabilities (B, 4, ...) → nested region fractions (B, 3, ...): WT = 1 + 2 + 3, TC = 1 + 3, ET = 3.

    For one-hot BraTS 2023 labels this is ``imaging.labels.to_regions``.
    """
    return torch.stack([p[:, 1] + p[:, 2] + p[:, 3], p[:, 1] + p[:, 3], p[:, 3]], dim=1)


def regions_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """BraTS 2023 labels (B, ...) → nested regions (B, 3, ...) float32."""
    one_hot = torch.nn.functional.one_hot(labels.long(), NUM_LABELS).movedim(-1, 1)  # (B, 4, ...)
    return regions_from_probabilities(one_hot.float())


def sincos_position_embedding(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding (1, H·W, D), as in MAE and DiT; fits any token grid."""
    if dim % 4:
        raise ValueError(f"the embedding width must divide by 4 for a 2D sin-cos embedding, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    parts = [f(c.reshape(-1, 1) * omega) for c in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)[None].float()  # (1, N, D)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class SelfAttention(nn.Module):
    """Multi-head self-attention on the project's SDPA kernel (``models.nn.attention.attention``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"the token width {dim} must divide by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        out = attention(q, k, v)  # (B, H, N, D/H)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, D)


class AdaLNZeroBlock(nn.Module):
    """A ViT block whose LayerNorm shift/scale and residual gates come from the tokens plus the condition tokens.

    Per token, ``modulation(x + s)`` gives (shift, scale, gate) for attention and for the MLP. With the modulation's
    last layer zeroed (``TAViT.initialize_adaln_zero``) every gate is 0 and the block is the identity.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act="GELU")
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # x: feature tokens (B, N, D); s: latent segmentation tokens (B, N, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(x + s).chunk(6, dim=-1)  # (B, N, D) each
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, N, D)


class TAViT(nn.Module):
    def __init__(
        self,
        *,
        spatial_dims: int = 2,
        in_channels: int = 2,
        out_channels: int = 1,
        cond_channels: int = NUM_REGIONS,
        channels: Sequence[int] = (64, 128, 256),
        cond_latent_channels: Sequence[int] = (16, 32, 64),
        depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        norm: str = "batch",
        regions_in_input: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"TA-ViT works on 2D slices (spatial_dims=2), got spatial_dims={spatial_dims}")
        if len(channels) < 1 or len(cond_latent_channels) != len(channels):
            raise ValueError(
                f"channels {list(channels)} and cond_latent_channels {list(cond_latent_channels)} need "
                "the same, non-zero number of levels (each level halves the side)"
            )
        self.downsampling = 2 ** len(channels)
        self.regions_in_input = regions_in_input
        dim = channels[-1]
        self.encoder = nn.ModuleList()
        prev = in_channels + (cond_channels if regions_in_input else 0)
        for c in channels:
            self.encoder.append(ResidualUnit(spatial_dims, prev, c, strides=2, norm=norm))
            prev = c
        cond = []
        prev = cond_channels
        for c in cond_latent_channels:
            cond.append(Convolution(spatial_dims, prev, c, strides=2, norm=norm))
            prev = c
        cond.append(Convolution(spatial_dims, prev, dim, kernel_size=1, conv_only=True))
        self.cond_encoder = nn.Sequential(*cond)
        self.bottleneck = ResidualUnit(spatial_dims, dim, dim, strides=1, norm=norm)
        self.blocks = nn.ModuleList(AdaLNZeroBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.decoder = nn.ModuleList()
        widths = [*channels[::-1][1:], channels[0]]
        prev = dim
        for c in widths:
            self.decoder.append(
                nn.Sequential(
                    Convolution(spatial_dims, prev, c, strides=2, is_transposed=True, norm=norm),
                    ResidualUnit(spatial_dims, c, c, strides=1, subunits=1, norm=norm),
                )
            )
            prev = c
        self.head = Convolution(spatial_dims, prev, out_channels, kernel_size=1, conv_only=True)
        # position codes by (height, width, device, dtype): built once, not on the host and copied at every call
        # (a blocking host-to-device copy per slice batch); not a buffer, so the state dict is unchanged
        self._positions: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}
        self.initialize_adaln_zero()

    def initialize_adaln_zero(self) -> None:
        """Zero every block's modulation output, so that each gate is 0 and each block starts as the identity."""
        for block in self.modules():
            if isinstance(block, AdaLNZeroBlock):
                for p in block.modulation[-1].parameters():  # the last Linear's weight and bias
                    nn.init.zeros_(p)

    def position_embedding(self, h: torch.Tensor) -> torch.Tensor:
        """The sin-cos code (1, N, D) of feature maps like ``h`` (B, D, h, w), on its device and in its dtype."""
        key = (h.shape[-2], h.shape[-1], h.device, h.dtype)
        if key not in self._positions:
            with torch.inference_mode(False):  # a normal tensor, usable by training after an inference call
                self._positions[key] = sincos_position_embedding(h.shape[1], *key[:2]).to(h.device, h.dtype)
        return self._positions[key]

    def encode_condition(self, regions: torch.Tensor) -> torch.Tensor:
        """Tumour regions (B, 3, H, W) → latent segmentation (B, D, H/f, W/f)."""
        return self.cond_encoder(regions)

    def transformer(self, tokens: torch.Tensor, cond_tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens, cond_tokens)
        return tokens  # (B, N, D)

    def forward(self, x: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        skips = []
        h = torch.cat([x, regions], dim=1) if self.regions_in_input else x  # (B, C (+ 3), H, W)
        for level in self.encoder:
            h = level(h)
            skips.append(h)  # (B, c_i, H/2^(i+1), W/2^(i+1))
        h = self.bottleneck(h)  # (B, D, h, w)
        height, width = h.shape[-2:]
        pos = self.position_embedding(h)  # (1, N, D)
        tokens = rearrange(h, "b d y x -> b (y x) d") + pos  # (B, N, D)
        cond = rearrange(self.encode_condition(regions), "b d y x -> b (y x) d")  # (B, N, D)
        tokens = self.transformer(tokens, cond)
        # The position code leaves as it came, so at initialisation the bottleneck is exactly its conv block.
        h = rearrange(tokens - pos, "b (y x) d -> b d y x", y=height, x=width)  # (B, D, h, w)
        for level, skip in zip(self.decoder, [*skips[::-1][1:], None]):
            h = level(h)
            if skip is not None:
                h = h + skip  # (B, c, 2h, 2w)
        return self.head(h)  # (B, out, H, W)


class TumourAwareSynthesis(nn.Module):
    """Segmentation predictor and TA-ViT: T1 (+ FLAIR) slices, and optionally known regions, → T1C slices."""

    def __init__(
        self,
        *,
        spatial_dims: int = 2,
        image_channels: int = 2,
        seg_channels: Sequence[int] = (32, 64, 128, 256),
        seg_strides: Sequence[int] = (2, 2, 2),
        seg_num_res_units: int = 2,
        channels: Sequence[int] = (64, 128, 256),
        cond_latent_channels: Sequence[int] = (16, 32, 64),
        depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        norm: str = "batch",
        residual: bool = False,
        slice_context: int = 0,
        regions_in_input: bool = False,
    ) -> None:
        super().__init__()
        if slice_context < 0:
            raise ValueError(f"slice_context counts neighbours on each side, so it must be ≥ 0, got {slice_context}")
        if len(seg_strides) != len(seg_channels) - 1:
            raise ValueError(
                f"seg_strides needs one stride per level below the top: {len(seg_channels) - 1} for "
                f"seg_channels {list(seg_channels)}, got {list(seg_strides)}"
            )
        self.image_channels = image_channels
        self.residual = residual
        self.slice_context = slice_context
        self.in_channels = image_channels * (2 * slice_context + 1)  # centre slice's images first, then neighbours
        self.segmenter = UNet(
            spatial_dims=spatial_dims,
            in_channels=self.in_channels,
            out_channels=NUM_LABELS,
            channels=tuple(seg_channels),
            strides=tuple(seg_strides),
            num_res_units=seg_num_res_units,
            norm="instance",
        )
        self.tavit = TAViT(
            spatial_dims=spatial_dims,
            in_channels=self.in_channels,
            out_channels=1,
            cond_channels=NUM_REGIONS,
            channels=channels,
            cond_latent_channels=cond_latent_channels,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            norm=norm,
            regions_in_input=regions_in_input,
        )
        self.divisor = math.lcm(self.tavit.downsampling, math.prod(seg_strides))

    def check_grid(self, shape: Sequence[int]) -> None:
        if any(n % self.divisor for n in shape):
            raise ValueError(
                f"slice grid {tuple(shape)} must be divisible by {self.divisor} on both sides "
                f"(the encoders downsample by {self.divisor})"
            )

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Slices (B, C, H, W) → label logits (B, 4, H, W)."""
        return self.segmenter(x)

    def predict_regions(self, x: torch.Tensor) -> torch.Tensor:
        """Slices (B, C, H, W) → predicted region fractions (B, 3, H, W)."""
        return regions_from_probabilities(self.segment(x).softmax(dim=1))

    def synthesise(self, x: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Slices (B, C, H, W) and regions (B, 3, H, W) → T1C (B, 1, H, W) as z-scores over the brain.

        With ``residual`` the network's output is T1C − T1, added here to the centre slice's T1 (channel 0).
        """
        out = self.tavit(x, regions)  # (B, 1, H, W)
        return x[:, :1] + out if self.residual else out

    def forward(self, x: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        self.check_grid(x.shape[2:])
        if regions is None:
            regions = self.predict_regions(x)
        return self.synthesise(x, regions)
