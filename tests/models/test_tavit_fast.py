"""The TA-ViT runner on the job's device (issue 15) against the previous host path: same T1C within float tolerance.

The previous path (tests/models/tavit_previous.py) z-scored and resampled with numpy/scipy and ran the network one
chunk at a time with a host copy each; the runner now does all of it in torch. Held here: the whole job on the tiny
preset (untrained, and with its adaLN-Zero gates opened) and on the demo-phantom@1 checkpoint, each torch helper
against its numpy twin, bf16 weights against fp32 within a tolerance, and the state dict's keys and shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tumorsynth.imaging.geometry import fit_to_grid
from tumorsynth.imaging.labels import to_regions
from tumorsynth.models.loader import clear_cache, load_generator
from tumorsynth.models.registry import entry_at
from tumorsynth.models.tavit import slices, volumes
from tumorsynth.models.tavit.configs import build_network, model_config
from tumorsynth.models.tavit.runner import TAViTGenerator

from .tavit_previous import previous_generate
from .test_tavit import SHAPE, FakeVolume, brain_volume, entry, inputs, nothing, oblique_affine, params  # noqa: F401

DEMO = Path(__file__).resolve().parents[2] / "checkpoints/tavit/demo-phantom@1"


def ellipsoid_inputs(shape: tuple[int, int, int], affine: np.ndarray) -> dict[str, FakeVolume]:
    """T1 and FLAIR: noisy positive ellipsoids in a zero background, and a mask with all three tumour labels."""
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    brain = x**2 / 0.55 + y**2 / 0.7 + z**2 / 0.75 < 1
    out = {
        n: FakeVolume(
            np.where(brain, 400 + 80 * rng.standard_normal(shape, dtype=np.float32), 0).astype(np.float32), affine
        )
        for n in ("t1", "flair")
    }
    labels = np.zeros(shape, np.uint8)
    c = [n // 2 for n in shape]
    labels[c[0] - 10 : c[0] + 10, c[1] - 12 : c[1] + 12, c[2] - 4 : c[2] + 4] = 2
    labels[c[0] - 5 : c[0] + 5, c[1] - 6 : c[1] + 6, c[2] - 2 : c[2] + 2] = 3
    labels[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 1 : c[2] + 1] = 1
    return out | {"mask": FakeVolume(labels, affine)}


def open_gates(gen: TAViTGenerator) -> TAViTGenerator:
    """Random adaLN-Zero modulation, so that the transformer and the condition change the output."""
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in gen.network.tavit.blocks:
            w = block.modulation[-1].weight
            w.copy_(torch.randn(w.shape, generator=rng))
    return gen


def both(gen: TAViTGenerator, request: dict, given: dict) -> tuple[np.ndarray, np.ndarray]:
    calls: list[tuple[int, int]] = []
    new = gen.generate(params(**request), given, lambda d, t: calls.append((d, t)))[0]
    old = previous_generate(gen, params(**request), given, nothing)[0]
    np.testing.assert_array_equal(new.affine, old.affine)
    assert new.data.dtype == old.data.dtype == np.float32 and new.data.shape == old.data.shape
    total = gen.total_steps(params())
    assert calls == [(i, total) for i in range(1, total + 1)]
    return old.data, new.data


@pytest.mark.parametrize("grid", ["input", "model"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_the_tiny_preset_gives_the_previous_paths_output(entry, inputs, grid, with_mask):  # noqa: F811
    gen = open_gates(TAViTGenerator(entry, "cpu"))
    given = inputs if with_mask else {k: inputs[k] for k in ("t1", "flair")}
    old, new = both(gen, {"output_grid": grid}, given)
    assert np.abs(old).max() > 1 and np.count_nonzero(old) > 0.1 * old.size  # not a trivial output
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(new == 0, old == 0)  # the same voxels are background


def test_the_demo_checkpoint_loads_and_gives_the_previous_paths_output():
    gen = TAViTGenerator(entry_at(DEMO), "cpu")
    given = ellipsoid_inputs((120, 120, 20), np.diag([-2.0, -2.0, 2.0, 1.0]))
    for request in ({}, {"output_grid": "model"}):
        for names in (("t1", "flair"), ("t1", "flair", "mask")):
            old, new = both(gen, request, {k: given[k] for k in names})
            np.testing.assert_allclose(new, old, rtol=0, atol=1e-4)
            np.testing.assert_array_equal(new == 0, old == 0)


def test_bf16_weights_stay_within_tolerance_of_fp32():
    """Measured on this preset and input: RMS difference 0.24–0.28 % of the output's RMS, at most 0.07 z."""
    entry_ = entry_at(DEMO)
    fp32, bf16 = TAViTGenerator(entry_, "cpu", precision="fp32"), TAViTGenerator(entry_, "cpu", precision="bf16")
    assert next(bf16.network.parameters()).dtype == torch.bfloat16
    given = ellipsoid_inputs((120, 120, 20), np.diag([-2.0, -2.0, 2.0, 1.0]))
    ref = fp32.generate(params(), given, nothing)[0].data
    out = bf16.generate(params(), given, nothing)[0].data
    assert out.dtype == np.float32
    brain = given["t1"].data != 0
    np.testing.assert_array_equal(out[~brain], 0)
    diff = (out - ref)[brain]
    rms, ref_rms = np.sqrt(np.mean(diff**2)), np.sqrt(np.mean(ref[brain] ** 2))
    assert rms < 0.01 * ref_rms and np.abs(diff).max() < 0.25, (rms / ref_rms, np.abs(diff).max())
    assert rms > 0  # bf16 really ran


def test_the_precision_setting_reaches_tavit_through_the_loader():
    """The worker passes ``Settings.precision`` to ``load_generator``; TA-ViT declares it (``runtime_options``)."""
    clear_cache()
    try:
        assert load_generator(entry_at(DEMO), "cpu", precision="bf16", batch_invariant=False).dtype == torch.bfloat16
        assert load_generator(entry_at(DEMO), "cpu", precision="auto").dtype == torch.float32  # fp32 off CUDA
    finally:
        clear_cache()


def test_state_dict_keys_and_shapes_are_the_checkpoints():
    net = build_network(json.loads((DEMO / "config.json").read_text()))
    with safe_open(str(DEMO / "model.safetensors"), "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    with torch.inference_mode():  # fills the position-code cache, which must stay out of the state dict
        net.eval()(torch.randn(1, net.in_channels, 96, 96))
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == stored


def test_a_network_used_for_inference_still_trains():
    """The cached position code is an ordinary tensor, so training after an inference call builds its graph."""
    net = build_network(model_config("tiny"))
    x = torch.randn(2, net.in_channels, 32, 32)
    with torch.inference_mode():
        net.eval()(x)
    net.train()(x).abs().mean().backward()
    assert all(p.grad is not None for p in net.tavit.encoder.parameters())


# ----- the torch helpers against their numpy twins -----------------------------------------------------------------
def test_zscore_matches_numpy():
    vol = brain_volume(3)
    np.testing.assert_allclose(
        volumes.zscore_brain(torch.from_numpy(vol)).numpy(), slices.zscore_brain(vol), rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(volumes.zscore_brain(torch.zeros(3, 4, 5)).numpy(), 0)
    flat = np.where(vol != 0, 7.0, 0.0).astype(np.float32)  # std 0: divided by 1
    np.testing.assert_array_equal(volumes.zscore_brain(torch.from_numpy(flat)).numpy(), slices.zscore_brain(flat))


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4, 2], [0, 1, 1, 0], [0, 0, 0], [0, 2, 2], [0, 4, 1]])
def test_regions_match_imaging_labels(labels):
    data = np.array(labels, np.int16).reshape(1, 1, -1)
    np.testing.assert_array_equal(volumes.to_regions(torch.from_numpy(data)).numpy(), to_regions(data))


def test_context_and_brain_slices_match_numpy():
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((7, 2, 4, 5)).astype(np.float32)
    for k in (0, 1, 2, 9):
        np.testing.assert_array_equal(
            volumes.with_context(torch.from_numpy(stack), k).numpy(), slices.with_context(stack, k)
        )
    grid = np.zeros((4, 5, 7), np.float32)
    grid[1, 2, [1, 4]] = 1.0
    grid[0, 0, 6] = -2.0
    np.testing.assert_array_equal(volumes.brain_slices(torch.from_numpy(grid)).numpy(), slices.brain_slices(grid))


@pytest.mark.parametrize(
    ("shape", "affine", "grid"),
    [
        ((40, 48, 30), oblique_affine(), (32, 32)),
        ((40, 48, 30), oblique_affine(), (96, 96)),
        ((120, 100, 12), np.diag([-2.0, -2.0, 2.0, 1.0]), (96, 96)),
        ((64, 80, 9), np.diag([1.2, 0.9, 3.3, 1.0]), (96, 96)),
        ((96, 96, 5), np.diag([2.5, 2.5, 1.0, 1.0]), (96, 96)),  # the identity in plane
    ],
)
def test_resampling_matches_scipy_and_its_zeros(shape, affine, grid):
    """Values within float32 rounding, and exactly the voxels scipy makes 0 are 0 (the runner's brain mask)."""
    vol = slices.zscore_brain(ellipsoid_inputs(shape, affine)["t1"].data)
    mapping = slices.slice_mapping(shape, affine, grid, (240.0, 240.0))
    ref = mapping.to_grid(vol, order=1)
    out = volumes.to_grid(mapping, torch.from_numpy(vol)[None])[0].numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out != 0, ref != 0)
    back_ref = mapping.from_grid(ref, order=1)
    back = volumes.from_grid(mapping, torch.from_numpy(ref)).numpy()
    np.testing.assert_allclose(back, back_ref, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(back != 0, back_ref != 0)


def test_resampling_a_whole_grid_with_fractional_steps_matches_scipy():
    """A 3D map with a non-unit step on every axis (not a slice grid): the weights on the third axis too."""
    rng = np.random.default_rng(2)
    vol = rng.standard_normal((20, 24, 18)).astype(np.float32)
    mapping = fit_to_grid(vol.shape, np.diag([1.5, 1.0, 2.0, 1.0]), (16, 30, 11), (35.0, 20.0, 40.0))
    np.testing.assert_allclose(
        volumes.to_grid(mapping, torch.from_numpy(vol)[None])[0].numpy(),
        mapping.to_grid(vol, order=1),
        rtol=0,
        atol=1e-5,
    )
