"""TA-ViT on the CPU: adaLN-Zero at initialisation, SDPA attention, shapes, and the runner's geometry and contract."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from tumorsynth.data.brats import normalise
from tumorsynth.errors import InvalidRequest, JobCanceled
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.nn.attention import explicit_attention
from tumorsynth.models.tavit.configs import (
    build_network,
    create_untrained,
    model_config,
)
from tumorsynth.models.tavit.network import SelfAttention, regions_from_labels
from tumorsynth.models.tavit.runner import TAViTGenerator
from tumorsynth.models.tavit.slices import with_context, zscore_brain

SHAPE = (40, 48, 30)


@dataclass
class FakeVolume:
    """What the runner reads of ``imaging.nifti.Volume``."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape[:3])


def oblique_affine() -> np.ndarray:
    a = np.deg2rad(20.0)
    aff = np.eye(4)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff[:3, :3] = rot @ np.diag([4.0, 4.0, 5.0])
    aff[:3, 3] = (-80.0, -90.0, -70.0)
    return aff


def brain_volume(seed: int) -> np.ndarray:
    """An ellipsoid of positive noisy intensities in a zero background."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    inside = x**2 / 0.8 + y**2 / 0.7 + z**2 / 0.8 < 1
    return np.where(inside, 500 + 100 * rng.standard_normal(SHAPE), 0).astype(np.float32)


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    return create_untrained(tmp_path_factory.mktemp("models") / "tavit", preset="tiny", seed=0)


@pytest.fixture(scope="module")
def generator(entry) -> TAViTGenerator:
    return TAViTGenerator(entry, "cpu")


@pytest.fixture(scope="module")
def live_generator(entry) -> TAViTGenerator:
    """adaLN-Zero makes an untrained TA-ViT ignore its condition; this copy gets random modulation weights."""
    gen = TAViTGenerator(entry, "cpu")
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in gen.network.tavit.blocks:
            w = block.modulation[-1].weight
            w.copy_(torch.randn(w.shape, generator=rng))
    return gen


@pytest.fixture(scope="module")
def inputs() -> dict[str, FakeVolume]:
    labels = np.zeros(SHAPE, np.int16)
    labels[12:28, 16:34, 8:22] = 2
    labels[16:24, 20:30, 11:19] = 1
    labels[18:22, 23:27, 13:17] = 3
    aff = oblique_affine()
    return {
        "t1": FakeVolume(brain_volume(0), aff),
        "flair": FakeVolume(brain_volume(1), aff),
        "mask": FakeVolume(labels, aff),
    }


def params(**kw) -> GenerationParams:
    base = {"num_samples": 1, "seed": 0, "sampler": "direct", "steps": 1, "modalities": ("t1c",)}
    return GenerationParams(**(base | kw))


def nothing(done: int, total: int) -> None:
    pass


# ----- network -----------------------------------------------------------------------------------------------------
def test_adaln_zero_blocks_are_the_identity_at_initialisation():
    config = model_config("tiny")
    config["network"]["regions_in_input"] = False  # the paper's: regions only through the latent condition
    net = build_network(config).eval()
    x, s = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    for block in net.tavit.blocks:
        assert not block.modulation[-1].weight.any() and not block.modulation[-1].bias.any()
        torch.testing.assert_close(block(x, s), x, rtol=0, atol=0)
        torch.nn.init.normal_(block.modulation[-1].weight)
        assert not torch.allclose(block(x, s), x)
    net.tavit.initialize_adaln_zero()
    for block in net.tavit.blocks:
        torch.testing.assert_close(block(x, s), x, rtol=0, atol=0)
    # so at initialisation the T1C does not depend on the tumour regions
    img = torch.randn(2, net.in_channels, 32, 32)
    a, b = torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.synthesise(img, a), net.synthesise(img, b))


def test_attention_runs_on_sdpa_and_matches_the_explicit_softmax(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kw):
        calls.append(args[0].shape)
        return sdpa(*args, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    config = model_config("tiny")
    net = build_network(config).eval()
    with torch.no_grad():
        net(torch.randn(2, net.in_channels, 32, 32))
    heads = config["network"]["num_heads"]
    assert calls == [torch.Size([2, heads, 16, 32 // heads])] * config["network"]["depth"]  # 4×4 tokens

    attn = SelfAttention(32, 4)
    x = torch.randn(2, 16, 32)
    q, k, v = attn.qkv(x).view(2, 16, 3, 4, 8).permute(2, 0, 3, 1, 4)
    expected = attn.proj(explicit_attention(q, k, v).transpose(1, 2).reshape(2, 16, 32))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_shapes_and_grid_check():
    net = build_network(model_config("tiny", flair=False)).eval()
    assert net.in_channels == 3  # the T1 of the slice and of its two neighbours
    x = torch.randn(3, net.in_channels, 32, 64)
    with torch.no_grad():
        assert net.segment(x).shape == (3, 4, 32, 64)
        assert net.predict_regions(x).shape == (3, 3, 32, 64)
        assert net(x).shape == (3, 1, 32, 64)
        with pytest.raises(ValueError, match="divisible by 8"):
            net(torch.randn(1, net.in_channels, 36, 32))


def test_residual_output_is_the_t1_when_the_last_layer_is_zero():
    net = build_network(model_config("tiny")).eval()
    with torch.no_grad():
        net.tavit.head.conv.weight.zero_()
        net.tavit.head.conv.bias.zero_()
        x = torch.randn(2, net.in_channels, 32, 32)
        torch.testing.assert_close(net(x), x[:, :1])  # channel 0: the centre slice's T1
        net.tavit.head.conv.bias.fill_(0.5)
        torch.testing.assert_close(net(x), x[:, :1] + 0.5)


def test_slice_context_puts_the_centre_first_and_clamps_at_the_edges():
    slices = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 2, 1, 1), np.float32)
    slices[:, 1] += 10  # channel 1 (FLAIR) = slice index + 10
    out = with_context(slices, 1)[:, :, 0, 0]  # (Z, 6): centre T1, FLAIR, then slice −1, then slice +1
    np.testing.assert_array_equal(out[0], [0, 10, 0, 10, 1, 11])
    np.testing.assert_array_equal(out[2], [2, 12, 1, 11, 3, 13])
    np.testing.assert_array_equal(out[3], [3, 13, 2, 12, 3, 13])
    assert with_context(slices, 0) is slices


def test_a_residual_runner_keeps_the_t1_at_its_own_resolution(entry, inputs):
    """With a zero residual the served T1C is the z-scored T1 voxel for voxel, not its resampled copy."""
    gen = TAViTGenerator(entry, "cpu")
    with torch.no_grad():
        gen.network.tavit.head.conv.weight.zero_()
        gen.network.tavit.head.conv.bias.zero_()
    out = gen.generate(params(), inputs, nothing)[0].data
    np.testing.assert_allclose(out, zscore_brain(inputs["t1"].data), atol=1e-4)


def test_regions_in_the_input_reach_the_output_at_initialisation():
    """Through the input channels the regions change the T1C before any adaLN-Zero gate opens."""
    net = build_network(model_config("tiny")).eval()
    img = torch.randn(2, net.in_channels, 32, 32)
    a, b = torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32)
    with torch.no_grad():
        assert (net.synthesise(img, a) - net.synthesise(img, b)).abs().max() > 1e-3


def test_regions_from_labels_are_nested():
    labels = torch.tensor([[0, 1, 2, 3]])
    expected = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(regions_from_labels(labels)[0], expected)


def test_zscore_is_the_training_normalisation():
    vol = brain_volume(3)
    np.testing.assert_allclose(zscore_brain(vol), normalise(vol), atol=1e-6)


# ----- runner ------------------------------------------------------------------------------------------------------
def test_output_in_the_t1_geometry(generator, inputs):
    calls = []
    t1_flair = {k: inputs[k] for k in ("t1", "flair")}
    out = generator.generate(params(), t1_flair, lambda d, t: calls.append((d, t)))
    total = generator.total_steps(params())
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert len(out) == 1 and out[0].modality == "t1c" and out[0].sample_index == 0
    v = out[0]
    assert v.data.shape == SHAPE and v.data.dtype == np.float32 and np.isfinite(v.data).all()
    np.testing.assert_array_equal(v.affine, inputs["t1"].affine)
    assert v.reference is inputs["t1"]
    assert not v.data[inputs["t1"].data == 0].any() and v.data[inputs["t1"].data != 0].std() > 0


def test_output_on_the_model_grid(generator, inputs, entry):
    out = generator.generate(params(output_grid="model"), inputs, nothing)[0]
    assert out.data.shape == (*entry.output_shape, SHAPE[2]) and out.reference is None
    np.testing.assert_allclose(np.linalg.norm(out.affine[:3, :3], axis=0), [*entry.output_spacing, 5.0])


def test_a_canceling_progress_stops_between_slice_batches(generator, inputs):
    calls = []

    def cancel_at_two(done, total):
        calls.append(done)
        if done == 2:
            raise JobCanceled("canceled by the user")

    with pytest.raises(JobCanceled):
        generator.generate(params(), inputs, cancel_at_two)
    assert calls == [1, 2]


def test_request_checks_name_the_field(generator, inputs):
    for missing in ("t1", "flair"):
        with pytest.raises(InvalidRequest) as exc:
            generator.generate(params(), {k: v for k, v in inputs.items() if k != missing}, nothing)
        assert exc.value.errors[0].field == missing
    for bad, field in [
        ({"num_samples": 2}, "num_samples"),
        ({"modalities": ("flair",)}, "modalities"),
        ({"sampler": "ddpm"}, "sampler"),
        ({"steps": 5}, "steps"),
    ]:
        with pytest.raises(InvalidRequest) as exc:
            generator.generate(params(**bad), inputs, nothing)
        assert exc.value.errors[0].field == field


def test_t1_only_checkpoint_needs_no_flair(tmp_path, inputs):
    entry = create_untrained(tmp_path / "tavit", preset="tiny", name="t1-only", flair=False)
    assert [i.name for i in entry.inputs] == ["t1", "mask"] and not entry.input("mask").required
    out = TAViTGenerator(entry, "cpu").generate(params(), {"t1": inputs["t1"]}, nothing)
    assert out[0].data.shape == SHAPE


def test_a_user_mask_replaces_the_predicted_segmentation(live_generator, inputs, monkeypatch):
    predicted = live_generator.generate(params(), {k: inputs[k] for k in ("t1", "flair")}, nothing)[0].data
    np.testing.assert_array_equal(
        live_generator.generate(params(), {k: inputs[k] for k in ("t1", "flair")}, nothing)[0].data, predicted
    )

    def no_segmenter(x):
        raise AssertionError("the segmenter ran although a mask was given")

    monkeypatch.setattr(live_generator.network, "segment", no_segmenter)
    with_mask = live_generator.generate(params(), inputs, nothing)[0].data
    assert np.abs(with_mask - predicted).max() > 1e-3
    empty = FakeVolume(np.zeros(SHAPE, np.int16), inputs["t1"].affine)
    without_tumour = live_generator.generate(params(), inputs | {"mask": empty}, nothing)[0].data
    assert np.abs(with_mask - without_tumour).max() > 1e-3
