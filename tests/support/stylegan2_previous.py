"""The StyleGAN2 generator's forward and sampler as they were before issue 15, kept as the reference that the fast path
must equal (tests/models/test_stylegan2_fast.py) and as the baseline of benchmarks/stylegan2_throughput.py.

It walks the parameters of a current ``Generator`` (the state dict did not change), with the old algorithm: one
sample at a time, each drawing z and then every layer's noise map from its own ``torch.Generator`` as the layers
run; every modulated convolution as one grouped convolution over per-sample weights; the FIR kernel built anew at
each resampling; fp32 throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tumorsynth.models.stylegan2.generator import Generator, SynthesisBlock, SynthesisLayer, ToImage
from tumorsynth.models.stylegan2.layers import FullyConnected, bias_act


def _fir_kernel(channels: int, gain: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device, dtype=dtype)
    k = torch.outer(f, f)
    return (k / k.sum() * gain).expand(channels, 1, 4, 4)


def upsample2d(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    return F.conv_transpose2d(x, _fir_kernel(c, 4.0, x.device, x.dtype), stride=2, padding=1, groups=c)


def modulated_conv2d(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True, padding: int = 0
) -> torch.Tensor:
    b, i, h, w_ = x.shape
    o = weight.shape[0]
    w = weight.unsqueeze(0) * styles.reshape(b, 1, i, 1, 1)  # (B, O, I, k, k)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    out = F.conv2d(x.reshape(1, b * i, h, w_), w.reshape(b * o, i, *weight.shape[2:]), padding=padding, groups=b)
    return out.reshape(b, o, *out.shape[2:])


def _affine(fc: FullyConnected, w: torch.Tensor) -> torch.Tensor:
    assert fc.bias is not None
    return bias_act(F.linear(w, fc.weight * fc.weight_gain), fc.bias * fc.bias_gain, fc.activation)


def layer(
    m: SynthesisLayer, x: torch.Tensor, w: torch.Tensor, noise_mode: str, generator: torch.Generator | None
) -> torch.Tensor:
    styles = _affine(m.affine, w)
    if m.up:
        x = upsample2d(x)
    x = modulated_conv2d(x, m.weight, styles, demodulate=True, padding=1)
    if noise_mode == "random":
        noise = torch.randn(
            (x.shape[0], 1, m.resolution, m.resolution), device=x.device, dtype=x.dtype, generator=generator
        )
        x = x + noise * m.noise_strength
    elif noise_mode == "const":
        x = x + m.noise_const * m.noise_strength
    return bias_act(x, m.bias, "lrelu", clamp=m.conv_clamp)


def to_image(m: ToImage, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    styles = _affine(m.affine, w) * m.weight_gain
    return bias_act(modulated_conv2d(x, m.weight, styles, demodulate=False), m.bias, "linear", clamp=m.conv_clamp)


def block(
    m: SynthesisBlock,
    x: torch.Tensor | None,
    img: torch.Tensor | None,
    ws: torch.Tensor,
    noise_mode: str,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    w_iter = iter(ws.unbind(1))
    if m.first:
        x = m.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
    else:
        assert x is not None
        x = layer(m.conv0, x, next(w_iter), noise_mode, generator)
    x = layer(m.conv1, x, next(w_iter), noise_mode, generator)
    y = to_image(m.torgb, x, next(w_iter))
    return x, (y if img is None else upsample2d(img) + y)


def synthesis(
    g: Generator, ws: torch.Tensor, noise_mode: str = "random", generator: torch.Generator | None = None
) -> torch.Tensor:
    x = img = None
    start = 0
    for b in g.blocks:
        assert isinstance(b, SynthesisBlock)
        x, img = block(b, x, img, ws[:, start : start + b.num_ws], noise_mode, generator)
        start += b.num_ws - 1
    assert img is not None
    return img


def sample_slices(
    g: Generator,
    label: int,
    seeds: list[int],
    truncation: float = 1.0,
    noise_mode: str = "random",
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The old ``sampler.sample_slices``: one forward pass per seed."""
    device = torch.device(device)
    labels = torch.tensor([label], dtype=torch.long, device=device)
    out = []
    for seed in seeds:
        gen = torch.Generator(device).manual_seed(int(seed))
        z = torch.randn((1, g.z_dim), generator=gen, device=device)
        ws = g.mapping(z, labels, truncation_psi=truncation)
        out.append(synthesis(g, ws, noise_mode, gen))
    return torch.cat(out)
