"""StyleGAN2 generator (Karras et al. 2020, config F without the CUDA kernels): mapping network → skip synthesis.

Written after NVlabs/stylegan2-ada-pytorch ``training/networks.py`` (``MappingNetwork``, ``SynthesisLayer``,
``ToRGBLayer``, ``SynthesisBlock`` with ``architecture='skip'``); MONAI has no StyleGAN2.

Class conditioning is the reference's: the class (one-hot) goes through an equalised linear embedding, is normalised
and concatenated with the normalised z before the 8-layer mapping MLP. ``w_avg`` is tracked per class (an EMA of w
over training batches, one row per class), so truncation pulls a sample toward the centre of its own class: with one
global mean (the reference's), ψ = 0 would give every class the same image.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .layers import FullyConnected, bias_act, modulated_conv2d, normalize_2nd_moment, upsample2d


class MappingNetwork(nn.Module):
    w_avg: torch.Tensor  # (max(1, classes), W) buffer

    def __init__(
        self,
        z_dim: int,
        num_classes: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 8,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
    ):
        super().__init__()
        self.z_dim, self.num_classes, self.w_dim, self.num_ws = z_dim, num_classes, w_dim, num_ws
        self.w_avg_beta = w_avg_beta
        self.embed = FullyConnected(num_classes, w_dim) if num_classes > 0 else None
        features = [z_dim + (w_dim if num_classes > 0 else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnected(a, b, activation="lrelu", lr_multiplier=lr_multiplier)
            for a, b in itertools.pairwise(features)
        )
        self.register_buffer("w_avg", torch.zeros(max(1, num_classes), w_dim))

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor | None, truncation_psi: float = 1.0, update_w_avg: bool = False
    ) -> torch.Tensor:
        x = normalize_2nd_moment(z)  # (B, Z)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this mapping network is class-conditional: pass labels (B,) of class indices")
            y = normalize_2nd_moment(self.embed(F.one_hot(labels, self.num_classes).to(z.dtype)))  # (B, W)
            x = torch.cat([x, y], dim=1)
        for layer in self.layers:
            x = layer(x)  # (B, W)
        rows = (
            labels
            if self.embed is not None and labels is not None
            else torch.zeros(len(x), dtype=torch.long, device=x.device)
        )
        if update_w_avg:
            self._track(x.detach(), rows)
        if truncation_psi != 1:
            x = self.w_avg[rows].lerp(x, truncation_psi)
        return x.unsqueeze(1).repeat(1, self.num_ws, 1)  # (B, num_ws, W)

    @torch.no_grad()
    def _track(self, w: torch.Tensor, rows: torch.Tensor) -> None:
        for k in rows.unique():
            mean = w[rows == k].mean(0)
            self.w_avg[k].copy_(mean.lerp(self.w_avg[k], self.w_avg_beta))


class SynthesisLayer(nn.Module):
    """Modulated 3×3 convolution (optionally after ×2 up-sampling) + per-pixel noise + bias + leaky ReLU."""

    noise_const: torch.Tensor  # (R, R) buffer

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: bool = False,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``noise`` (B, 1, R, R): this layer's noise maps drawn beforehand (``noise_mode='random'``); else drawn
        here from ``generator``."""
        styles = self.affine(w)  # (B, I)
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, padding=1, up=self.up)  # (B, O, R, R)
        if noise_mode == "random":
            if noise is None:
                noise = torch.randn(self.noise_shape(x.shape[0]), device=x.device, dtype=x.dtype, generator=generator)
            x = x + noise.to(x.dtype) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        return bias_act(x, self.bias, "lrelu", clamp=self.conv_clamp)

    def noise_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, 1, self.resolution, self.resolution)


class ToImage(nn.Module):
    """Modulated 1×1 convolution to image channels, not demodulated (``ToRGBLayer``)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, "linear", clamp=self.conv_clamp).float()  # the image sum stays float32


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (const or ×2) → conv0 → conv1, and the image skip path summed up."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.first = in_channels == 0
        if self.first:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToImage(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_ws = 2 if self.first else 3  # ws consumed: conv0 (unless first), conv1, torgb

    def layers(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.first else [self.conv0, self.conv1]

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str,
        generator: torch.Generator | None,
        noise: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``noise``: one map per layer of ``layers()``, or None to draw them as the layers run."""
        w_iter = iter(ws.unbind(1))
        noise_iter = iter(noise or [])
        if self.first:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)  # (B, C, 4, 4)
        else:
            if x is None:
                raise ValueError("a block after the first needs the previous block's features")
            x = self.conv0(x, next(w_iter), noise_mode, generator, next(noise_iter, None))
        x = self.conv1(x, next(w_iter), noise_mode, generator, next(noise_iter, None))
        y = self.torgb(x, next(w_iter))
        img = y if img is None else upsample2d(img) + y
        return x, img


class Generator(nn.Module):
    """z (B, z_dim) + class (B,) → image (B, img_channels, R, R), about [-1, 1] once trained.

    Channels at resolution r: ``min(channel_base // r, channel_max)``, as in the reference.
    """

    def __init__(
        self,
        resolution: int = 256,
        num_classes: int = 3,
        img_channels: int = 1,
        z_dim: int = 512,
        w_dim: int = 512,
        mapping_layers: int = 8,
        mapping_lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = 256.0,
    ):
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
        self.resolution, self.num_classes, self.img_channels = resolution, num_classes, img_channels
        self.z_dim, self.w_dim = z_dim, w_dim
        self.block_resolutions = [2**i for i in range(2, int(np.log2(resolution)) + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        blocks = [
            SynthesisBlock(channels[r // 2] if r > 4 else 0, channels[r], w_dim, r, img_channels, conv_clamp)
            for r in self.block_resolutions
        ]
        self.blocks = nn.ModuleList(blocks)
        # Consecutive blocks share the w of the torgb/conv0 boundary, as ``SynthesisNetwork`` counts them.
        self.num_ws = sum(b.num_ws - 1 for b in blocks) + 1
        self.mapping = MappingNetwork(
            z_dim, num_classes, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier, w_avg_beta
        )
        self.synthesis_dtype, self.channels_last = torch.float32, False

    def synthesis_blocks(self) -> list[SynthesisBlock]:
        return [b for b in self.blocks if isinstance(b, SynthesisBlock)]

    def noise_layers(self) -> list[SynthesisLayer]:
        """The layers that take a noise map, in the order they run (and draw it)."""
        return [layer for block in self.synthesis_blocks() for layer in block.layers()]

    def synthesis(
        self,
        ws: torch.Tensor,
        noise_mode: str = "random",
        generator: torch.Generator | None = None,
        noise: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``noise``: maps (B, 1, r, r) for ``noise_layers()`` in order, drawn beforehand; None draws them here."""
        x: torch.Tensor | None = None
        img: torch.Tensor | None = None
        start = used = 0
        for block in self.synthesis_blocks():
            n = len(block.layers())
            maps = noise[used : used + n] if noise is not None else None
            x, img = block(x, img, ws[:, start : start + block.num_ws], noise_mode, generator, maps)  # img (B, C, r, r)
            start, used = start + block.num_ws - 1, used + n
        assert img is not None  # a resolution >= 4 makes at least one block
        return img

    def forward(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None,
        truncation_psi: float = 1.0,
        noise_mode: str = "random",
        generator: torch.Generator | None = None,
        update_w_avg: bool = False,
        noise: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        ws = self.mapping(z, labels, truncation_psi, update_w_avg)  # (B, num_ws, W)
        return self.synthesis(ws, noise_mode, generator, noise)

    def synthesis_to(self, dtype: torch.dtype, channels_last: bool = False) -> Generator:
        """Store the synthesis network's convolution weights, biases and constant in ``dtype`` (bf16 for serving on a
        GPU: cast once here, not by autocast at every call) and run its features in it. The mapping network, the
        affine layers that make the styles, the demodulation factors and the summed image stay float32: they are
        small, and the styles set every layer's gain. ``channels_last`` stores 4D weights NHWC, the layout cuDNN's
        bf16 convolutions run natively."""
        for block in self.synthesis_blocks():
            block.to(dtype)
            for m in block.modules():
                if isinstance(m, FullyConnected):
                    m.float()
            if channels_last:
                # Module.to takes memory_format at run time; torch's overloads do not declare it
                block.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.synthesis_dtype, self.channels_last = dtype, channels_last
        return self
