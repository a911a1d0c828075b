"""Cross-job batching on the CPU with the tiny LDM: what a job gets does not depend on its partners."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tumorsynth.errors import JobCanceled
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.ldm.configs import create_untrained
from tumorsynth.models.ldm.runner import LDMGenerator
from tumorsynth.workers.batching import Batcher

from ..models.test_ldm_runner import FakeVolume, oblique_affine


def live(entry, **kw) -> LDMGenerator:
    """Random weights where MONAI zero-initialises, so that every input reaches ε (as in test_ldm_runner)."""
    gen = LDMGenerator(entry, "cpu", **kw)
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in gen.network.unet.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=rng) * 0.05)
    return gen


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    return create_untrained(tmp_path_factory.mktemp("models") / "ldm", preset="tiny", seed=0)


@pytest.fixture(scope="module")
def invariant(entry) -> LDMGenerator:
    return live(entry, batch_invariant=True)


def mask(shape=(40, 48, 30), shift=0, affine=None) -> FakeVolume:
    labels = np.zeros(shape, np.int16)
    labels[12 + shift : 28, 16:34, 8:22] = 2
    labels[16:24, 20 + shift : 30, 11:19] = 1
    labels[18:22, 23:27, 13 + shift : 17] = 3
    return FakeVolume(labels, oblique_affine() if affine is None else affine)


# Three jobs with different masks (shapes and geometry too), classes, seeds and sample counts; one sampler.
JOBS = [
    (GenerationParams(num_samples=2, seed=11, sampler="ddpm", steps=10, modalities=("t1c", "flair")), mask()),
    (
        GenerationParams(num_samples=1, seed=4, sampler="ddpm", steps=10, modalities=(), tumor_class="HGG"),
        mask((36, 40, 28), shift=2, affine=np.diag([4.5, 4.5, 5.5, 1.0])),
    ),
    (
        GenerationParams(
            num_samples=1, seed=11, sampler="ddpm", steps=10, modalities=("t2",), tumor_class="LGG", output_grid="model"
        ),
        mask(shift=3),
    ),
]


def alone(gen: LDMGenerator, params, m) -> list:
    return gen.generate(params, {"mask": m}, lambda d, t: None)


def batched(gen: LDMGenerator, batcher: Batcher, jobs, progress=None) -> list:
    """Each job on its own thread as a worker's task threads run them; all prepare before any is sampled."""
    ready = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def task(k: int) -> None:
        params, m = jobs[k]
        try:
            fn = (progress or {}).get(k, lambda d, t: None)
            with batcher.preparing() as span:
                ready.wait(timeout=30)
                job = gen.prepare(params, {"mask": m})
                images = batcher.sample(gen, job, params.num_samples, fn, span)
            results[k] = gen.finish(job, images)
        except Exception as exc:
            results[k] = exc

    threads = [threading.Thread(target=task, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def assert_same(a: list, b: list, exact: bool = True) -> None:
    assert [(v.sample_index, v.modality, v.data.shape) for v in a] == [
        (v.sample_index, v.modality, v.data.shape) for v in b
    ]
    for x, y in zip(a, b):
        if exact:
            assert np.array_equal(x.data, y.data)
        else:
            np.testing.assert_allclose(x.data, y.data, atol=1e-4)
        np.testing.assert_array_equal(x.affine, y.affine)


def test_a_job_is_bit_identical_alone_and_batched(invariant):
    batcher = Batcher(max_samples=8, max_wait_s=10)
    together = batched(invariant, batcher, JOBS)
    assert list(batcher.batches) == [3]  # one batch of 4 samples from three jobs
    for (params, m), got in zip(JOBS, together):
        assert_same(alone(invariant, params, m), got)
    assert not np.array_equal(together[0][0].data, together[2][0].data)


def test_with_the_default_kernels_a_batched_job_is_within_rounding(entry):
    gen = live(entry)
    batcher = Batcher(max_samples=8, max_wait_s=10)
    together = batched(gen, batcher, JOBS)
    assert list(batcher.batches) == [3]
    for (params, m), got in zip(JOBS, together):
        assert_same(alone(gen, params, m), got, exact=False)


def test_a_canceled_job_leaves_the_batch_and_its_partners_finish(invariant):
    def cancel_at_two(done, total):
        if done == 2:
            raise JobCanceled("canceled by the user")

    batcher = Batcher(max_samples=8, max_wait_s=10)
    together = batched(invariant, batcher, JOBS, progress={1: cancel_at_two})
    assert isinstance(together[1], JobCanceled)
    assert_same(alone(invariant, *JOBS[0]), together[0])
    assert_same(alone(invariant, *JOBS[2]), together[2])


def test_batches_hold_at_most_max_samples(invariant):
    jobs = [
        (GenerationParams(num_samples=1, seed=s, sampler="ddim", steps=5, modalities=("t1",)), mask()) for s in range(3)
    ]
    batcher = Batcher(max_samples=2, max_wait_s=10)
    together = batched(invariant, batcher, jobs)
    assert sorted(batcher.batches) == [1, 2]
    for (params, m), got in zip(jobs, together):
        assert_same(alone(invariant, params, m), got)


def test_jobs_of_other_samplers_or_steps_are_not_batched(invariant):
    jobs = [
        (GenerationParams(num_samples=1, seed=1, sampler="ddim", steps=5, modalities=("t1",)), mask()),
        (GenerationParams(num_samples=1, seed=1, sampler="ddim", steps=6, modalities=("t1",)), mask()),
    ]
    batcher = Batcher(max_samples=8, max_wait_s=10)
    together = batched(invariant, batcher, jobs)
    assert list(batcher.batches) == [1, 1]
    assert all(isinstance(r, list) for r in together)


def test_a_job_waits_no_longer_than_max_wait_for_partners(invariant):
    """A partner still preparing (never arriving) holds the job back for max_wait at most; a lone job not at all."""
    params, m = JOBS[2]
    batcher = Batcher(max_samples=8, max_wait_s=0.3)
    done = threading.Event()
    with batcher.preparing():  # a partner that never comes
        job = invariant.prepare(params, {"mask": m})
        t = threading.Thread(target=lambda: (batcher.sample(invariant, job, 1, lambda d, t: None), done.set()))
        t.start()
        assert done.wait(timeout=60), "the job waited for a partner past max_wait"
    lone = Batcher(max_samples=8, max_wait_s=3600)
    assert lone.sample(invariant, job, 1, lambda d, t: None).shape[0] == 1  # returns: nobody else is preparing
    assert list(batcher.batches) == [1] and list(lone.batches) == [1]


def test_a_failing_batch_fails_its_jobs_and_the_sampler_lives_on(invariant):
    params, m = JOBS[2]
    job = invariant.prepare(params, {"mask": m})
    batcher = Batcher(max_samples=8, max_wait_s=0)

    class Broken:
        device = torch.device("cpu")

        def batch_key(self, p):
            return ("x",)

        def sample_batch(self, jobs, progress):
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.sample(Broken(), job, 1, lambda d, t: None)
    assert batcher.sample(invariant, job, 1, lambda d, t: None).shape[0] == 1
