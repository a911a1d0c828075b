"""The tiny untrained LDM served end to end on the CPU: geometry, progress, cancellation, determinism."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from tumorsynth.errors import InvalidRequest, JobCanceled
from tumorsynth.imaging.labels import to_regions
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.ldm.configs import create_untrained
from tumorsynth.models.ldm.runner import Z_LIMIT, LDMGenerator

MASK_SHAPE = (40, 48, 30)


@dataclass
class FakeVolume:
    """What the runner reads of ``imaging.nifti.Volume``."""

    data: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape[:3])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def oblique_affine() -> np.ndarray:
    a = np.deg2rad(20.0)
    aff = np.eye(4)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff[:3, :3] = rot @ np.diag([4.0, 4.0, 5.0])
    aff[:3, 3] = (-80.0, -90.0, -70.0)
    return aff


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    return create_untrained(tmp_path_factory.mktemp("models") / "ldm", preset="tiny", seed=0)


@pytest.fixture(scope="module")
def generator(entry) -> LDMGenerator:
    return LDMGenerator(entry, "cpu")


@pytest.fixture(scope="module")
def live_generator(entry) -> LDMGenerator:
    """MONAI zero-initialises the UNet's last conv and each residual branch's last conv, so an untrained UNet
    predicts ε = 0 whatever its inputs; this copy gets random weights there so that every input reaches ε."""
    gen = LDMGenerator(entry, "cpu")
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in gen.network.unet.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=rng) * 0.05)
    return gen


@pytest.fixture(scope="module")
def mask() -> FakeVolume:
    labels = np.zeros(MASK_SHAPE, np.int16)
    labels[12:28, 16:34, 8:22] = 2
    labels[16:24, 20:30, 11:19] = 1
    labels[18:22, 23:27, 13:17] = 3
    return FakeVolume(labels, oblique_affine())


def params(**kw) -> GenerationParams:
    base = {"num_samples": 2, "seed": 11, "sampler": "dpm++", "steps": 5, "modalities": ("t1c", "flair")}
    return GenerationParams(**(base | kw))


def test_outputs_on_the_input_grid(generator, mask):
    calls: list[tuple[int, int]] = []
    out = generator.generate(params(), {"mask": mask}, lambda d, t: calls.append((d, t)))
    assert calls == [(i, 5) for i in range(1, 6)]
    assert generator.total_steps(params()) == 5
    assert [(v.sample_index, v.modality) for v in out] == [(0, "t1c"), (0, "flair"), (1, "t1c"), (1, "flair")]
    for v in out:
        assert v.data.shape == MASK_SHAPE and v.data.dtype == np.float32
        assert np.all(np.isfinite(v.data)) and np.abs(v.data).max() <= Z_LIMIT  # z-scores, clipped
        np.testing.assert_array_equal(v.affine, mask.affine)
        assert v.reference is mask
    assert not np.array_equal(out[0].data, out[2].data)  # two samples, two draws


def test_outputs_on_the_model_grid(generator, mask, entry):
    p = params(output_grid="model", num_samples=1, modalities=())
    out = generator.generate(p, {"mask": mask}, lambda d, t: None)
    assert [v.modality for v in out] == list(entry.modalities)
    for v in out:
        assert v.data.shape == tuple(entry.output_shape) and v.data.dtype == np.float32
        assert v.reference is None
        np.testing.assert_allclose(np.linalg.norm(v.affine[:3, :3], axis=0), entry.output_spacing)


def test_a_canceling_progress_stops_generation(generator, mask):
    calls = []

    def cancel_at_two(done, total):
        calls.append(done)
        if done == 2:
            raise JobCanceled("canceled by the user")

    with pytest.raises(JobCanceled):
        generator.generate(params(), {"mask": mask}, cancel_at_two)
    assert calls == [1, 2]


def test_same_seed_same_volumes_and_sample_i_independent_of_the_batch(live_generator, mask):
    def run(n: int, seed: int = 3):
        p = params(num_samples=n, seed=seed, sampler="ddpm", steps=10, output_grid="model", modalities=("t1",))
        return [v.data for v in live_generator.generate(p, {"mask": mask}, lambda d, t: None)]

    three = run(3)
    np.testing.assert_array_equal(run(3)[1], three[1])
    np.testing.assert_allclose(run(1)[0], three[0], atol=1e-5)
    np.testing.assert_allclose(run(1, seed=5)[0], three[2], atol=1e-5)


def test_class_and_mask_reach_the_network(live_generator, mask):
    def run(m: FakeVolume, tumor_class=None) -> np.ndarray:
        p = params(num_samples=1, tumor_class=tumor_class, output_grid="model", modalities=("t1",))
        return live_generator.generate(p, {"mask": m}, lambda d, t: None)[0].data

    base = run(mask)
    np.testing.assert_array_equal(run(mask), base)
    assert np.abs(run(mask, "HGG") - base).max() > 1e-4
    assert np.abs(run(mask, "HGG") - run(mask, "LGG")).max() > 1e-4
    assert np.abs(run(FakeVolume(np.zeros_like(mask.data), mask.affine)) - base).max() > 1e-4


def test_request_checks(generator, mask):
    nothing = lambda d, t: None
    for bad, field in [
        ({"tumor_class": "meningioma"}, "tumor_class"),
        ({"modalities": ("dwi",)}, "modalities"),
        ({"sampler": "euler"}, "sampler"),
        ({"steps": 1000}, "steps"),
    ]:
        with pytest.raises(InvalidRequest) as exc:
            generator.generate(params(**bad), {"mask": mask}, nothing)
        assert exc.value.errors[0].field == field
    with pytest.raises(InvalidRequest):
        generator.generate(params(), {}, nothing)


def test_mask_channels_for_each_convention():
    brats2019 = np.array([0, 1, 2, 4]).reshape(4, 1, 1)
    brats2023 = np.array([0, 1, 2, 3]).reshape(4, 1, 1)
    binary = np.array([0, 1, 1, 0]).reshape(4, 1, 1)
    expected = np.array([[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]], np.float32)  # WT, TC, ET per label
    np.testing.assert_array_equal(to_regions(brats2019)[..., 0, 0], expected)
    np.testing.assert_array_equal(to_regions(brats2023)[..., 0, 0], expected)
    np.testing.assert_array_equal(
        to_regions(binary.astype(np.float32))[..., 0, 0], [[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    )
    assert to_regions(brats2023).dtype == np.float32


def test_classifier_free_guidance_extrapolates_from_the_unconditional_pass(live_generator, mask):
    """guidance w: (1 + w)·conditional − w·unconditional at every step. w = 0 is the unguided sample; without a
    class it is a no-op (both passes would be unconditional); jobs with other weights never share a batch; and a
    guided step runs the class's pass and the unconditional (class 0) pass on the same latents and mask in one
    batch, each as it would run alone."""

    def run(tumor_class, **options) -> np.ndarray:
        p = params(num_samples=1, tumor_class=tumor_class, output_grid="model", modalities=("t1",), options=options)
        return live_generator.generate(p, {"mask": mask}, lambda d, t: None)[0].data

    plain = run("HGG")
    np.testing.assert_array_equal(run("HGG", guidance=0.0), plain)
    guided = run("HGG", guidance=3.0)
    assert np.abs(guided - plain).max() > 1e-4
    np.testing.assert_array_equal(run("HGG", guidance=3.0), guided)  # deterministic
    np.testing.assert_array_equal(run(None, guidance=3.0), run(None))
    key = live_generator.batch_key
    assert key(params(tumor_class="HGG", options={"guidance": 2.0})) != key(params(tumor_class="HGG"))
    assert key(params(options={"guidance": 2.0})) == key(params())  # no class: no guidance
    with pytest.raises(InvalidRequest) as exc:
        run("HGG", guidance=-1.0)
    assert exc.value.errors[0].field == "options.guidance"

    # the arithmetic, on one denoiser call: capture what the sampler is given
    net = live_generator.network
    seen: list[torch.Tensor] = []
    labels_seen: list[list[int]] = []
    original = net.denoise

    def spy(z, t, cond, class_labels, unet=None):
        labels_seen.append(class_labels.tolist())
        out = original(z, t, cond, class_labels, unet)
        seen.append(out.detach().clone())
        if len(seen) == 1:
            seen.append(
                torch.stack(
                    [
                        original(z[i : i + 1], t[i : i + 1], cond[i : i + 1], class_labels[i : i + 1])[0]
                        for i in range(len(z))
                    ]
                )
            )
        return out

    net.denoise = spy
    try:
        job = live_generator.prepare(
            params(num_samples=1, tumor_class="HGG", steps=5, options={"guidance": 1.0}), {"mask": mask}
        )
        assert job.guidance == 1.0 and job.class_index == 2
        live_generator.sample_batch([job], [lambda d, t: None])
    finally:
        del net.denoise
    both = seen[0]
    assert labels_seen[0] == [2, 0]
    assert both.shape[0] == 2  # conditional and unconditional passes in one batch
    torch.testing.assert_close(both, seen[1], atol=1e-5, rtol=1e-4)  # the batch changes neither pass
