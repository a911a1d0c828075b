"""The batched StyleGAN2 path (issue 15) against the one-sample-at-a-time path it replaced, kept in
tests/support/stylegan2_previous.py: same state dict, same slices per seed within float rounding, bf16 within a
tolerance of fp32, on the tiny preset and on the shipped demo checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from tests.support import stylegan2_previous as previous
from tumorsynth.models.checkpoints import load_into
from tumorsynth.models.registry import entry_at
from tumorsynth.models.stylegan2.configs import PRESETS, build_network, create_untrained
from tumorsynth.models.stylegan2.generator import Generator
from tumorsynth.models.stylegan2.layers import FullyConnected, modulated_conv2d, upsample2d, upsample_conv3x3
from tumorsynth.models.stylegan2.runner import StyleGAN2Generator, to_unit, to_voxels
from tumorsynth.models.stylegan2.sampler import sample_slices, seeded_inputs

DEMO = Path(__file__).resolve().parents[2] / "checkpoints/stylegan2/demo-phantom@1"


@pytest.fixture(scope="module")
def tiny() -> Generator:
    """Tiny preset with what an untrained net lacks and a trained one has: noise strengths and class means."""
    torch.manual_seed(0)
    g = build_network(PRESETS["tiny"]).eval().requires_grad_(False)
    with torch.no_grad():
        g.mapping.w_avg.normal_()
        for layer in g.noise_layers():
            layer.noise_strength.fill_(0.5)
    return g


@pytest.fixture(scope="module")
def demo() -> Generator:
    return load_into(build_network(entry_at(DEMO).config), entry_at(DEMO)).eval().requires_grad_(False)


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("demodulate", [True, False])
def test_fused_and_unfused_modulated_convolutions_agree(b, demodulate):
    torch.manual_seed(b)
    x, weight, styles = torch.randn(b, 16, 12, 12), torch.randn(8, 16, 3, 3), torch.rand(b, 16) * 2 + 0.1
    fused = modulated_conv2d(x, weight, styles, demodulate, padding=1, fused=True)
    unfused = modulated_conv2d(x, weight, styles, demodulate, padding=1, fused=False)
    torch.testing.assert_close(unfused, fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        unfused, previous.modulated_conv2d(x, weight, styles, demodulate, 1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("noise_mode", ["random", "const", "none"])
def test_batched_sampler_equals_the_previous_one_seed_by_seed(tiny, noise_mode):
    seeds = [3, 4, 5, 11, 12]
    before = previous.sample_slices(tiny, 2, seeds, 0.7, noise_mode)
    ours = sample_slices(tiny, 2, seeds, 0.7, noise_mode, batch_size=3)  # batches of 3 and 2
    assert ours.shape == (5, 1, 16, 16) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, before, rtol=1e-4, atol=1e-4)
    assert float((ours - before).abs().max()) < 1e-4 * float(before.abs().max())


def test_noise_drawn_beforehand_equals_noise_drawn_as_the_layers_run(tiny):
    z = torch.randn(1, tiny.z_dim, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    torch.randn((1, tiny.z_dim), generator=g)  # z came first
    inline = tiny(z, torch.tensor([0]), generator=g)
    z2, noise = seeded_inputs(tiny, [9], "random", torch.device("cpu"))
    assert torch.equal(z, z2) and noise is not None and len(noise) == len(tiny.noise_layers())
    torch.testing.assert_close(tiny(z2, torch.tensor([0]), noise=noise), inline, rtol=0, atol=0)


def test_demo_checkpoint_loads_unchanged_and_gives_the_previous_slices(demo):
    with safe_open(DEMO / "model.safetensors", "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    assert stored == {k: tuple(v.shape) for k, v in demo.state_dict().items()}  # keys and shapes unchanged
    seeds = list(range(40, 52))
    for label in range(3):
        before = previous.sample_slices(demo, label, seeds, 1.0)
        ours = sample_slices(demo, label, seeds, 1.0)
        torch.testing.assert_close(ours, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])  # True: as served on CUDA
def test_bf16_synthesis_stays_within_tolerance_of_fp32(demo, channels_last):
    ours = build_network(entry_at(DEMO).config)
    ours.load_state_dict(demo.state_dict())
    ours.eval().requires_grad_(False).synthesis_to(torch.bfloat16, channels_last)
    assert list(ours.state_dict()) == list(demo.state_dict())  # same keys: a bf16 copy saves as the checkpoint
    block = ours.synthesis_blocks()[-1]
    assert block.conv1.weight.dtype == torch.bfloat16 and block.torgb.bias.dtype == torch.bfloat16
    assert block.conv1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert all(m.weight.dtype == torch.float32 for m in ours.modules() if isinstance(m, FullyConnected))
    seeds = list(range(100, 116))
    fp32 = sample_slices(demo, 1, seeds)
    bf16 = sample_slices(ours, 1, seeds)
    assert bf16.dtype == torch.float32
    a, b = to_unit(fp32), to_unit(bf16)  # the served [0, 1] intensities
    rel_rms = float(np.sqrt(np.mean((a - b) ** 2) / np.mean(a**2)))
    assert rel_rms < 0.02 and float(np.abs(a - b).max()) < 0.1, (rel_rms, float(np.abs(a - b).max()))
    assert float(np.abs(a - b).max()) > 0  # it did run in bf16


def test_voxels_on_the_device_equal_the_previous_per_image_rotation(tiny):
    images = sample_slices(tiny, 0, [1, 2, 3])
    before = [np.ascontiguousarray(np.rot90(s, k=-1)[..., None], dtype=np.float32) for s in to_unit(images)]
    ours = to_voxels(images)
    assert ours.shape == (3, 16, 16, 1) and ours.dtype == np.float32
    for a, b in zip(before, ours):
        np.testing.assert_array_equal(a, b)


def test_runner_precision_option(tmp_path):
    entry = create_untrained(tmp_path / "stylegan2", preset="tiny", seed=0)
    assert StyleGAN2Generator(entry, "cpu").dtype == torch.float32  # auto: bf16 on CUDA only
    bf16 = StyleGAN2Generator(entry, "cpu", precision="bf16")
    assert bf16.network.synthesis_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        StyleGAN2Generator(entry, "cpu", precision="fp8")


def test_fir_filter_made_while_serving_still_trains():
    """The FIR taps are cached per device and dtype; made first under inference mode they must still be usable by
    autograd (float64: a cache entry no other test makes)."""
    with torch.inference_mode():
        upsample2d(torch.ones(1, 2, 4, 4, dtype=torch.float64))
    x = torch.ones(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    upsample2d(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_batch_size_follows_the_device_and_the_feature_size():
    from tumorsynth.models.stylegan2.sampler import GPU_BATCH, batch_size_for

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    demo, paper = build_network(PRESETS["demo"]), build_network(PRESETS["paper"])
    assert batch_size_for(paper, gpu) == batch_size_for(demo, gpu) == GPU_BATCH  # reads no GPU: shapes only
    assert batch_size_for(paper, cpu) == 1 < batch_size_for(demo, cpu) < GPU_BATCH
    with pytest.raises(ValueError, match="batch_size"):
        sample_slices(demo, 0, [1], batch_size=0)


@pytest.mark.parametrize("n,groups", [(2, 1), (4, 1), (5, 1), (8, 2)])
def test_upsampling_convolution_at_the_low_resolution_equals_upsample_then_convolve(n, groups):
    torch.manual_seed(n)
    x = torch.randn(2, 6, n, n, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6 // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    before = F.conv2d(upsample2d(x), weight, padding=1, groups=groups)
    ours = upsample_conv3x3(x, weight, groups)
    assert ours.shape == (2, 4, 2 * n, 2 * n)
    torch.testing.assert_close(ours, before, rtol=1e-10, atol=1e-10)  # border included
    g = torch.randn_like(before)
    torch.testing.assert_close(
        torch.autograd.grad((ours * g).sum(), [x, weight]), torch.autograd.grad((before * g).sum(), [x, weight])
    )  # it trains the same
