"""StyleGAN2 residual discriminator with minibatch standard deviation and a class projection head.

After NVlabs/stylegan2-ada-pytorch ``training/networks.py`` (``DiscriminatorBlock`` with ``architecture='resnet'``,
``MinibatchStdLayer``, ``DiscriminatorEpilogue``); conditioning is the reference's projection: the class is mapped
to a vector ``cmap`` and the score is ``<features, cmap> / sqrt(cmap_dim)``; optionally (``aux_classifier``)
an AC-GAN class head on the same features, whose logits the trainer reads from ``last_class_logits``. Only training
uses D: checkpoints keep the (EMA) generator alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d, FullyConnected, normalize_2nd_moment


class DiscriminatorBlock(nn.Module):
    def __init__(
        self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int, conv_clamp: float | None = None
    ):
        super().__init__()
        self.fromrgb = (
            Conv2d(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
            if in_channels == 0
            else None
        )
        self.conv0 = Conv2d(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2d(
            tmp_channels, out_channels, 3, activation="lrelu", down=True, conv_clamp=conv_clamp, gain=math.sqrt(0.5)
        )
        self.skip = Conv2d(tmp_channels, out_channels, 1, bias=False, down=True, gain=math.sqrt(0.5))

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(img)  # (B, T, r, r)
        y = self.skip(x)  # (B, O, r/2, r/2)
        x = self.conv1(self.conv0(x))
        return y + x  # both branches carry gain sqrt(0.5): the sum keeps unit variance


class MinibatchStd(nn.Module):
    """Appends the std of features over groups of ``group_size`` samples as ``num_channels`` extra channels."""

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:
            g -= 1  # a batch not divisible by the group size uses the largest group size that divides it
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # (G, M, F, c, H, W)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # (M, F, c, H, W)
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # (N, F, H, W)
        return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    def __init__(
        self,
        resolution: int = 256,
        num_classes: int = 3,
        img_channels: int = 1,
        channel_base: int = 32768,
        channel_max: int = 512,
        cmap_dim: int | None = None,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = 256.0,
        aux_classifier: bool = False,
    ):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        self.num_classes = num_classes
        resolutions = [2**i for i in range(int(np.log2(resolution)), 2, -1)]
        channels = {r: min(channel_base // r, channel_max) for r in [*resolutions, 4]}
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(
                channels[r] if r < resolution else 0, channels[r], channels[r // 2], img_channels, conv_clamp
            )
            for r in resolutions
        )
        c4 = channels[4]
        self.cmap_dim = cmap_dim or c4
        self.embed = FullyConnected(num_classes, self.cmap_dim) if num_classes > 0 else None
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_channels)
        self.conv = Conv2d(c4 + mbstd_num_channels, c4, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnected(c4 * 16, c4, activation="lrelu")
        self.out = FullyConnected(c4, self.cmap_dim if num_classes > 0 else 1)
        # AC-GAN (Odena et al. 2017): class logits from the same features, so D must learn what tells the classes
        # apart (a small mass) from the labels of the reals, not only from what tells reals from fakes
        self.aux = FullyConnected(c4, num_classes) if aux_classifier and num_classes > 1 else None
        self.last_class_logits: torch.Tensor | None = None  # (B, K) of the last forward, when ``aux`` is on

    def forward(self, img: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        x = None
        for block in self.blocks:
            x = block(x, img)
        x = self.conv(self.mbstd(x))  # (B, C4, 4, 4)
        h = self.fc(x.flatten(1))  # (B, C4)
        x = self.out(h)  # (B, cmap_dim) or (B, 1)
        if self.aux is not None:
            self.last_class_logits = self.aux(h)
        if self.embed is None:
            return x.squeeze(1)
        if labels is None:
            raise ValueError("a class-conditional discriminator needs the images' class labels")
        cmap = normalize_2nd_moment(self.embed(F.one_hot(labels, self.num_classes).to(img.dtype)))  # (B, cmap_dim)
        return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)  # (B,) logits
