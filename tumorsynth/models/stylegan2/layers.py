"""StyleGAN2's building blocks, written after NVlabs/stylegan2-ada-pytorch ``training/networks.py``.

MONAI has no StyleGAN2 and no modulated convolution, so these are written by hand. They run on plain PyTorch ops
(no custom CUDA kernels): resampling is a [1, 3, 3, 1] FIR filter applied as a depthwise (transposed) convolution,
which is what ``upfirdn2d`` computes for a factor of 2.

Equalised learning rate (Karras et al. 2018): every weight is stored as N(0, 1) / ``lr_multiplier`` and scaled at
run time by ``lr_multiplier / sqrt(fan_in)``, so Adam moves all layers at the same rate whatever their fan-in.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(
    x: torch.Tensor, bias: torch.Tensor | None, activation: str, gain: float = 1.0, clamp: float | None = None
) -> torch.Tensor:
    """Bias, then leaky ReLU (slope 0.2, gain sqrt 2) or identity, then an optional clamp, as ``bias_act``."""
    if bias is not None:
        x = x + bias.reshape(1, -1, *[1] * (x.ndim - 2))
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2) * (LRELU_GAIN * gain)
    elif activation == "linear":
        x = x * gain if gain != 1 else x
    else:
        raise ValueError(f"activation must be 'lrelu' or 'linear', got {activation!r}")
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


@functools.lru_cache(maxsize=32)
def _fir_taps(device: torch.device, dtype: torch.dtype, gain: float) -> torch.Tensor:
    """The [1, 3, 3, 1] ⊗ [1, 3, 3, 1] filter (1, 1, 4, 4), made once per device and dtype: building it from a Python
    list at every call was a host-to-device copy, which waits for the GPU's queue to drain, at every resampling."""
    with torch.inference_mode(False):  # a plain tensor, usable by autograd even if first made while serving
        f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
        k = torch.outer(f, f)
        return (k / k.sum() * gain).to(device=device, dtype=dtype).reshape(1, 1, 4, 4)


def _fir_kernel(channels: int, gain: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _fir_taps(device, dtype, gain).expand(channels, 1, 4, 4)  # (C, 1, 4, 4): one filter per channel


def upsample2d(x: torch.Tensor) -> torch.Tensor:
    """×2 by zero insertion and the [1, 3, 3, 1] FIR filter (gain 4 keeps a constant image constant)."""
    c = x.shape[1]
    return F.conv_transpose2d(x, _fir_kernel(c, 4.0, x.device, x.dtype), stride=2, padding=1, groups=c)


def downsample2d(x: torch.Tensor) -> torch.Tensor:
    """÷2 by the [1, 3, 3, 1] FIR filter and subsampling."""
    c = x.shape[1]
    return F.conv2d(x, _fir_kernel(c, 1.0, x.device, x.dtype), stride=2, padding=1, groups=c)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``conv2d(upsample2d(x), weight, padding=1, groups=groups)`` with the 3×3 convolution run at the low resolution:
    a quarter of the multiply-adds of the synthesis' up-sampling layers (63 % of the 256 px generator's, by its shapes).

    Convolutions commute, so the 3×3 convolution of the *uncropped* up-sampled image is the FIR filter applied to a
    stride-2 transposed convolution of x (stylegan2-ada-pytorch's order). The trained network saw the cropped image
    zero-padded instead, which differs on the output's border: the ring of up-sampled values just outside the crop
    is subtracted back out, by 3×3 convolutions of four thin strips (only x's border rows and columns make that
    ring), so the result equals the previous order within float rounding.

    x (B, I, n, n), weight (O, I / groups, 3, 3) → (B, O, 2n, 2n).
    """
    b, i, n, _ = x.shape
    o, m = weight.shape[0], 2 * n
    flipped = weight.reshape(groups, o // groups, i // groups, 3, 3).transpose(1, 2).flip([3, 4])
    v = F.conv_transpose2d(x, flipped.reshape(i, o // groups, 3, 3), stride=2, groups=groups)  # (B, O, m+1, m+1)
    y = F.conv2d(v, _fir_kernel(o, 4.0, x.device, x.dtype), padding=1, groups=o)  # (B, O, m, m)
    top, bottom, left, right = _upsampled_ring(x)  # (B, I, m + 2) each
    s_top, s_bottom = x.new_zeros(b, i, 3, m + 2), x.new_zeros(b, i, 3, m + 2)  # ring rows -1..1 and m-2..m
    s_top[:, :, 0], s_bottom[:, :, 2] = top, bottom
    s_top[:, :, 1:, 0], s_top[:, :, 1:, -1] = left[:, :, 1:3], right[:, :, 1:3]
    s_bottom[:, :, :2, 0], s_bottom[:, :, :2, -1] = left[:, :, m - 1 : m + 1], right[:, :, m - 1 : m + 1]
    s_left, s_right = x.new_zeros(b, i, m, 3), x.new_zeros(b, i, m, 3)  # ring rows 0..m-1, columns -1..1, m-2..m
    s_left[..., 0], s_right[..., 2] = left[:, :, 1 : m + 1], right[:, :, 1 : m + 1]
    # in place on the border only (autograd allows it: a convolution keeps its inputs, not its output)
    y[:, :, :1] -= F.conv2d(s_top, weight, groups=groups)
    y[:, :, -1:] -= F.conv2d(s_bottom, weight, groups=groups)
    y[:, :, 1:-1, :1] -= F.conv2d(s_left, weight, groups=groups)
    y[:, :, 1:-1, -1:] -= F.conv2d(s_right, weight, groups=groups)
    return y


def up_conv3x3(x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``conv2d(upsample2d(x), weight, padding=1, groups=groups)`` by whichever order is faster for x's size."""
    if low_resolution_pays(x):
        return upsample_conv3x3(x, weight, groups)
    return F.conv2d(upsample2d(x), weight, padding=1, groups=groups)


def low_resolution_pays(x: torch.Tensor) -> bool:
    """Whether ``upsample_conv3x3`` is the faster order for x: it adds ~16 small operations (the ring) to save 3/4 of
    the convolution, which pays on large inputs only. Measured per layer on this CPU (one thread, the up-sampling rows
    of benchmarks/stylegan2_throughput.py, batches of 4 at 256 px and 16 at 64 px): from 4 px 2.1-2.2× slower, from
    8 px 1.1-1.5× slower, from 16 px 1.1-1.5× faster, from 32 px and up 1.6-2.4× faster. So: from 16 px."""
    return x.shape[-1] >= 16


def _upsampled_ring(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows -1 and 2n, columns -1 and 2n of the uncropped ×2 up-sampled x (each (B, C, 2n + 2), from -1 to 2n): the
    first and last rows (columns) of x, each up-sampled alone, since the 4-tap filter reaches no further."""
    k = _fir_kernel(x.shape[1], 4.0, x.device, x.dtype)
    c = x.shape[1]
    up = lambda part: F.conv_transpose2d(part, k, stride=2, groups=c)  # uncropped: padding 0
    return up(x[:, :, :1])[:, :, 0], up(x[:, :, -1:])[:, :, 3], up(x[..., :1])[..., 0], up(x[..., -1:])[..., 3]


class FullyConnected(nn.Module):
    """Equalised-LR linear layer (``FullyConnectedLayer``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        return bias_act(F.linear(x, w), b, self.activation)


class Conv2d(nn.Module):
    """Equalised-LR convolution with optional ×2 down-sampling (``Conv2dLayer``, used by the discriminator)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        down: bool = False,
        conv_clamp: float | None = None,
        gain: float = 1.0,
    ):
        super().__init__()
        self.activation, self.down, self.conv_clamp, self.gain = activation, down, conv_clamp, gain
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = downsample2d(x)
        x = F.conv2d(x, self.weight * self.weight_gain, padding=self.padding)
        clamp = self.conv_clamp * self.gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=self.gain, clamp=clamp)


def demodulation(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """(B, O) factors that give each sample's modulated weights unit L2 norm per output channel, in float32.

    ‖w_o ⊙ s‖² = Σ_i s_i² Σ_k w_oik², so one (B, I) × (I, O) product gives every sample's norms without forming the
    B modulated weight tensors (stylegan2-ada-pytorch's ``dcoefs``).
    """
    wsq = weight.square().sum(dim=[2, 3], dtype=torch.float32)  # (O, I)
    return (styles.float().square() @ wsq.T + 1e-8).rsqrt()


def fuse_modulation(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Fused for one sample: the grouped convolution is then a plain one. For B > 1 on a GPU unfused: a grouped
    convolution over B weight copies (151 M values per 512-channel layer at batch 64) is what kept the generator at
    73 images/s, while a batched convolution with one weight is what cuDNN runs fastest (bf16 tensor cores
    included). On the CPU the faster of the two follows the cost of the scaling (benchmarks/stylegan2_throughput.py:
    at batch 4, 512 channels at 32 px 0.24 s fused vs 0.17 s unfused, 64 channels at 256 px 0.30 vs 0.38 s), so it
    is fused where a sample's O·I·k² weights are fewer than its (I + O)·H·W activations."""
    b, i, h, w = x.shape
    if b == 1:
        return True
    if x.device.type != "cpu":
        return False
    return weight[0].numel() * weight.shape[0] < (i + weight.shape[0]) * h * w


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    padding: int = 0,
    fused: bool | None = None,
    up: bool = False,
) -> torch.Tensor:
    """Per-sample modulated (and demodulated) convolution, of ``upsample2d(x)`` when ``up`` (3×3, padding 1).

    x (B, I, H, W), weight (O, I, k, k), styles (B, I). Demodulation rescales each output channel's weights to unit
    L2 norm, so a unit-variance input gives (about) a unit-variance output, replacing AdaIN's instance norm.

    Two equal computations, as stylegan2-ada-pytorch's ``fused_modconv``: *fused* scales the weights per sample and
    runs one grouped convolution (groups = B); *unfused* scales the activations by the styles, runs one ordinary
    convolution with the shared weight and scales its output by the demodulation factors. ``fused=None`` picks with
    ``fuse_modulation``. Styles and the demodulation factors are computed in float32 whatever the activations' dtype.
    """
    b, i, h, w_ = x.shape
    o = weight.shape[0]
    styles = styles.float()
    dcoefs = demodulation(weight, styles) if demodulate else None  # (B, O)
    if fused is None:
        fused = fuse_modulation(x, weight)
    if not fused:
        x = x * styles.to(x.dtype).reshape(b, i, 1, 1)
        x = up_conv3x3(x, weight.to(x.dtype)) if up else F.conv2d(x, weight.to(x.dtype), padding=padding)
        return x * dcoefs.to(x.dtype).reshape(b, o, 1, 1) if dcoefs is not None else x
    w = weight.float().unsqueeze(0) * styles.reshape(b, 1, i, 1, 1)  # (B, O, I, k, k)
    if dcoefs is not None:
        w = w * dcoefs.reshape(b, o, 1, 1, 1)
    x, w = x.reshape(1, b * i, h, w_), w.reshape(b * o, i, *weight.shape[2:]).to(x.dtype)
    out = up_conv3x3(x, w, groups=b) if up else F.conv2d(x, w, padding=padding, groups=b)
    return out.reshape(b, o, *out.shape[2:])
