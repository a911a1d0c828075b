"""The StyleGAN2 family on the CPU (tiny preset): layers, generator, discriminator, sampler and runner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tumorsynth.errors import InvalidRequest
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.checkpoints import load_into
from tumorsynth.models.families import FAMILIES
from tumorsynth.models.stylegan2.configs import PRESETS, build_network, create_untrained, model_config
from tumorsynth.models.stylegan2.discriminator import Discriminator, MinibatchStd
from tumorsynth.models.stylegan2.generator import Generator
from tumorsynth.models.stylegan2.layers import (
    Conv2d,
    FullyConnected,
    downsample2d,
    modulated_conv2d,
    upsample2d,
)
from tumorsynth.models.stylegan2.runner import StyleGAN2Generator
from tumorsynth.models.stylegan2.sampler import sample_slices

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def net() -> Generator:
    torch.manual_seed(0)
    return build_network(TINY).eval()


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    return create_untrained(tmp_path_factory.mktemp("models") / "stylegan2", preset="tiny", seed=0)


def params(**kw) -> GenerationParams:
    base = {"num_samples": 2, "seed": 3, "sampler": "direct", "steps": 1, "modalities": (), "tumor_class": "glioma"}
    return GenerationParams(**(base | kw))


# ----- layers ---------------------------------------------------------------------------------------------------------
def test_demodulation_gives_unit_std_for_unit_input_whatever_the_style_scale():
    torch.manual_seed(0)
    x = torch.randn(4, 64, 24, 24)
    weight = torch.randn(32, 64, 3, 3)
    styles = torch.rand(4, 64) * 2 + 0.1
    y = modulated_conv2d(x, weight, styles, demodulate=True, padding=1)[..., 1:-1, 1:-1]  # away from zero padding
    assert y.shape == (4, 32, 22, 22)
    assert abs(float(y.std()) - 1.0) < 0.05
    torch.testing.assert_close(
        modulated_conv2d(x, weight, styles * 7.0, demodulate=True, padding=1),
        modulated_conv2d(x, weight, styles, demodulate=True, padding=1),
        rtol=1e-4,
        atol=1e-4,
    )
    raw = modulated_conv2d(x, weight, styles * 7.0, demodulate=False, padding=1)[..., 1:-1, 1:-1]
    assert float(raw.std()) > 10.0  # without demodulation the style's scale goes straight through


def test_equalised_learning_rate_scales_weights_at_run_time():
    torch.manual_seed(0)
    fc = FullyConnected(256, 128)
    assert fc.weight_gain == pytest.approx(1 / 16) and abs(float(fc.weight.detach().std()) - 1.0) < 0.02
    assert abs(float(fc(torch.randn(512, 256)).std()) - 1.0) < 0.05
    slow = FullyConnected(256, 128, lr_multiplier=0.01)  # the mapping network's 100× slower learning rate
    assert abs(float(slow.weight.detach().std()) - 100.0) < 2.0 and slow.weight_gain == pytest.approx(0.01 / 16)
    assert abs(float(slow(torch.randn(512, 256)).std()) - 1.0) < 0.05
    conv = Conv2d(32, 16, 3)
    assert conv.weight_gain == pytest.approx(1 / math.sqrt(32 * 9))
    assert abs(float(conv(torch.randn(8, 32, 16, 16))[..., 1:-1, 1:-1].std()) - 1.0) < 0.05


def test_fir_resampling_keeps_a_constant_image_constant_and_halves_or_doubles_it():
    x = torch.full((2, 3, 8, 8), 2.5)
    up, down = upsample2d(x), downsample2d(x)
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], torch.full_like(up[..., 1:-1, 1:-1], 2.5))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 2.5))


# ----- networks -------------------------------------------------------------------------------------------------------
def test_generator_and_discriminator_shapes(net):
    z = torch.randn(4, net.z_dim)
    labels = torch.tensor([0, 1, 2, 0])
    img = net(z, labels)
    assert img.shape == (4, 1, 16, 16) and torch.isfinite(img).all()
    assert net.num_ws == 2 * len(net.block_resolutions)  # 16 px: blocks at 4, 8, 16
    ws = net.mapping(z, labels)
    assert ws.shape == (4, net.num_ws, net.w_dim)
    disc = Discriminator(**TINY["discriminator"])
    logits = disc(img, labels)
    assert logits.shape == (4,)
    assert MinibatchStd(4)(torch.randn(8, 5, 4, 4)).shape == (8, 6, 4, 4)


def test_class_changes_the_image_and_the_discriminator_sees_gradients(net):
    z = torch.randn(1, net.z_dim).repeat(3, 1)
    with torch.no_grad():
        img = net(z, torch.tensor([0, 1, 2]), noise_mode="const")
    assert not torch.allclose(img[0], img[1]) and not torch.allclose(img[1], img[2])
    disc = Discriminator(**TINY["discriminator"])
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    (g,) = torch.autograd.grad(disc(x, torch.tensor([0, 2])).sum(), x)
    assert g.abs().sum() > 0


def test_invalid_resolution_is_refused_naming_the_constraint():
    with pytest.raises(ValueError, match="power of two"):
        Generator(resolution=48, z_dim=8, w_dim=8, channel_base=64, channel_max=8)


# ----- truncation, determinism ----------------------------------------------------------------------------------------
def test_truncation_psi_zero_gives_the_class_mean_w_image():
    torch.manual_seed(1)
    g = build_network(TINY).eval()
    with torch.no_grad():
        for _ in range(5):  # track w_avg as training does
            g.mapping(torch.randn(12, g.z_dim), torch.tensor([0, 1, 2] * 4), update_w_avg=True)
    assert (g.mapping.w_avg.abs().sum(1) > 0).all()  # one mean per class
    z = torch.randn(3, g.z_dim)
    labels = torch.tensor([1, 1, 1])
    with torch.no_grad():
        out = g(z, labels, truncation_psi=0.0, noise_mode="const")
        mean_ws = g.mapping.w_avg[1].expand(3, g.num_ws, g.w_dim)
        expected = g.synthesis(mean_ws, noise_mode="const")
        free = g(z, labels, truncation_psi=1.0, noise_mode="const")
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[0], out[2])  # every z lands on the class mean
    assert not torch.allclose(free[0], free[2])
    other = g(z[:1], torch.tensor([2]), truncation_psi=0.0, noise_mode="const")
    assert not torch.allclose(other[0], out[0])  # the mean is the class's own


def test_seeded_sampling_is_deterministic_and_independent_of_the_batch(net):
    a = sample_slices(net, 0, [5, 6])
    b = sample_slices(net, 0, [5, 6])
    c = sample_slices(net, 0, [6])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1:], c)
    assert not torch.allclose(a[0], a[1])
    calls = []
    sample_slices(net, 2, [1, 2, 3], progress=lambda d, t: calls.append((d, t)), batch_size=2)
    assert calls == [(2, 3), (3, 3)]  # once per batch
    with pytest.raises(ValueError, match="truncation"):
        sample_slices(net, 0, [1], truncation=1.5)


# ----- checkpoint and runner ------------------------------------------------------------------------------------------
def test_save_load_round_trip_keeps_weights_and_w_avg(tmp_path):
    from tumorsynth.models.checkpoints import save_checkpoint
    from tumorsynth.models.registry import entry_from_config

    config = model_config("tiny") | {"name": "rt", "version": "1", "trained": False, "trained_on": "nothing"}
    torch.manual_seed(3)
    g = build_network(config)
    g.mapping.w_avg.normal_()
    written = save_checkpoint(tmp_path / "rt@1", config=config, module=g, card="# test\n")
    entry = entry_from_config(written.path, written.config)
    loaded = load_into(build_network(entry.config), entry)
    for (k, v), (k2, v2) in zip(g.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    torch.testing.assert_close(sample_slices(g.eval(), 1, [9], truncation=0.5), sample_slices(loaded, 1, [9], 0.5))


def test_runner_makes_single_slice_volumes_in_unit_range(entry):
    assert FAMILIES["stylegan2"].generator.endswith(":StyleGAN2Generator")
    runner = StyleGAN2Generator(entry, "cpu")
    steps = []
    out = runner.generate(params(num_samples=3), {}, lambda d, t: steps.append(d))
    assert steps == [3] and runner.total_steps(params(num_samples=3)) == 3  # one batch
    assert [v.sample_index for v in out] == [0, 1, 2] and {v.modality for v in out} == {"slice"}
    for v in out:
        assert v.data.shape == (16, 16, 1) and v.data.dtype == np.float32
        assert v.data.min() >= 0.0 and v.data.max() <= 1.0
        np.testing.assert_allclose(np.linalg.norm(v.affine[:3, :3], axis=0), [15.0, 15.0, 1.0])
    again = runner.generate(params(num_samples=1, options={"truncation": 0.7}), {}, lambda d, t: None)
    first = runner.generate(params(num_samples=1), {}, lambda d, t: None)
    assert not np.array_equal(again[0].data, first[0].data)
    # a seed's slice alone equals it in a batch within float rounding (batched kernels round by batch size)
    np.testing.assert_allclose(first[0].data, out[0].data, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"tumor_class": "HGG"}, "tumor_class"),
        ({"tumor_class": None}, "tumor_class"),
        ({"options": {"truncation": 1.5}}, "options.truncation"),
        ({"options": {"truncation": "x"}}, "options.truncation"),
        ({"options": {"temperature": 1.0}}, "options.temperature"),
        ({"sampler": "maskgit"}, "sampler"),
        ({"modalities": ("flair",)}, "modalities"),
    ],
)
def test_runner_refuses_what_it_cannot_do_naming_the_field(entry, kw, field):
    runner = StyleGAN2Generator(entry, "cpu")
    with pytest.raises(InvalidRequest) as err:
        runner.generate(params(**kw), {}, lambda d, t: None)
    assert err.value.errors[0].field == field


# ----- DiffAugment ----------------------------------------------------------------------------------------------------
def test_diff_augment_translation_shifts_content_and_brings_in_background():
    from tumorsynth.models.stylegan2.augment import translation

    x = torch.full((64, 1, 16, 16), -1.0)
    x[:, :, 6:10, 6:10] = 1.0  # a bright square in the middle
    out = translation(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal((out == 1).sum(dim=[1, 2, 3]), torch.full((64,), 16))  # moved by ≤ 2 px, never cut
    moved = [not torch.equal(o, x[0]) for o in out]
    assert any(moved) and not all(moved)  # each image its own draw, (0, 0) among them
    assert set(out.unique().tolist()) == {-1.0, 1.0}  # integer shifts; what comes in at the edge is background


def test_diff_augment_cutout_blanks_a_quarter_and_color_keeps_flat_images_flat():
    from tumorsynth.models.stylegan2.augment import color, cutout

    x = torch.ones(32, 1, 16, 16)
    out = cutout(x, generator=torch.Generator().manual_seed(0))
    blank = (out == -1).sum(dim=[1, 2, 3])
    assert int(blank.max()) == 64 and int(blank.min()) > 0  # an 8×8 square, clipped at the border at worst
    flat = color(torch.zeros(8, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(flat.std(dim=[1, 2, 3]), torch.zeros(8), atol=1e-6)  # contrast about the image's mean
    assert flat[:, 0, 0, 0].std() > 0  # brightness drawn per image


def test_diff_augment_is_differentiable_seeded_and_refuses_unknown_policies():
    from tumorsynth.models.stylegan2.augment import diff_augment

    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    a = diff_augment(x, generator=torch.Generator().manual_seed(1))
    b = diff_augment(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # G's loss reaches G through the augmentation
    with pytest.raises(ValueError, match="rotation"):
        diff_augment(x, ["translation", "rotation"])
