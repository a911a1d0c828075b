"""The VQGAN family on the CPU: codebook, losses, masking, both samplers, and the runner end to end (tiny preset)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tumorsynth.errors import InvalidRequest, JobCanceled
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.families import FAMILIES
from tumorsynth.models.nn.attention import attention, explicit_attention
from tumorsynth.models.vqgan.configs import PRESETS, build_network, create_untrained
from tumorsynth.models.vqgan.losses import gradient_loss
from tumorsynth.models.vqgan.masking import dilate, hybrid_mask, top_important
from tumorsynth.models.vqgan.quantizer import VectorQuantizer
from tumorsynth.models.vqgan.runner import VQGANGenerator
from tumorsynth.models.vqgan.sampler import ar_decode, guided, maskgit_decode


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    return create_untrained(tmp_path_factory.mktemp("models") / "vqgan", preset="tiny", seed=0)


@pytest.fixture(scope="module")
def generator(entry) -> VQGANGenerator:
    return VQGANGenerator(entry, "cpu")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_network(PRESETS["tiny"]).eval()


def params(**kw) -> GenerationParams:
    base = {"num_samples": 2, "seed": 11, "sampler": "maskgit", "steps": 8, "modalities": (), "tumor_class": "HGG"}
    return GenerationParams(**(base | kw))


def generators(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


# ----- codebook -------------------------------------------------------------------------------------------------------
def test_straight_through_codebook_gets_gradients_and_so_does_the_encoder():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4, ema=False).train()
    z = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    out = q(z)
    assert out.indices.shape == (2, 3, 3, 3) and out.z_q.shape == z.shape
    (out.z_q.pow(2).sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert q.codebook.weight.grad is not None and q.codebook.weight.grad.abs().sum() > 0
    torch.testing.assert_close(out.z_q, q.lookup(out.indices))  # forward value is the code itself


def test_ema_codebook_moves_towards_its_inputs_without_gradients():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4, ema=True, decay=0.5, restart_threshold=0.0, normalise=False, data_init=False).train()
    z = torch.full((1, 4, 2, 2, 2), 3.0, requires_grad=True)
    code = int(q(z).indices.flatten()[0])
    before = (q.codebook.weight[code] - 3.0).abs().max()
    for _ in range(5):
        out = q(z)
    assert (q.codebook.weight[code] - 3.0).abs().max() < 0.1 * before
    assert not q.codebook.weight.requires_grad
    out.z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through


def test_dead_codes_are_restarted_on_encoder_outputs():
    torch.manual_seed(0)
    q = VectorQuantizer(
        16, 4, ema=True, usage_decay=0.5, restart_threshold=0.05, normalise=False, data_init=False
    ).train()
    kept = q.codebook.weight.clone()
    flat = torch.randn(10, 4) + 5.0
    q.usage[4:] = 0.0
    assert q.restart_dead_codes(flat) == 12
    torch.testing.assert_close(q.codebook.weight[:4], kept[:4])
    for row in q.codebook.weight[4:]:
        assert (flat - row).abs().sum(1).min() < 1e-6  # every restarted code is one of the inputs
    # in training, codes left unused long enough are restarted automatically
    q2 = VectorQuantizer(
        16, 4, ema=True, usage_decay=0.5, restart_threshold=0.05, normalise=False, data_init=False
    ).train()
    z = torch.full((1, 4, 2, 2, 2), 7.0)
    for _ in range(8):
        q2(z)
    assert (q2.codebook.weight - 7.0).abs().amax(1).lt(1e-4).sum() >= 15


def test_codes_start_on_the_encoder_outputs_and_are_compared_by_direction():
    """Issue 13: codes drawn in ±1/K sat far from encoder outputs of any other scale, so one code was nearest to all
    of them. Initialised from the first training batch and compared on the unit sphere, they cover the data."""
    torch.manual_seed(0)
    centres = torch.randn(32, 6) * 10.0  # encoder outputs of a scale nothing in the init knows about
    z = (centres[torch.randint(0, 32, (512,))] + 0.1 * torch.randn(512, 6)).T.reshape(1, 6, 8, 8, 8)
    q = VectorQuantizer(64, 6, code_dim=4).train()
    assert not bool(q.initialised)
    out = q(z)
    assert bool(q.initialised) and float(out.perplexity) > 16
    torch.testing.assert_close(q.codes().norm(dim=1), torch.ones(64))
    torch.testing.assert_close(q.project(z * 100.0).norm(dim=1), torch.ones(512))  # whatever the encoder's scale
    torch.testing.assert_close(q.lookup(out.indices), out.z_q)  # forward value: the projected code


def test_restarts_are_relative_to_the_uniform_share_and_go_where_the_error_is():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 2, normalise=False, data_init=False, restart_threshold=0.1).train()
    with torch.no_grad():
        q.codebook.weight.copy_(torch.tensor([[float(i), 0.0] for i in range(8)]))
    q.usage.copy_(torch.tensor([100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 5.0, 0.5]))  # uniform share 63.2
    assert q.alive().tolist() == [True] * 6 + [False, False]  # an absolute 0.03 would have kept both alive
    far = torch.tensor([[3.0, 50.0], [3.0, 60.0]])
    flat = torch.cat([torch.tensor([[float(i), 0.0] for i in range(6)]), far])
    assert q.restart_dead_codes(flat) == 2
    restarted = q.codebook.weight[6:]
    assert all((far - row).abs().sum(1).min() < 1e-6 for row in restarted)  # the worst-represented inputs


# ----- losses ---------------------------------------------------------------------------------------------------------
def test_gradient_loss_compares_in_plane_gradients_of_the_three_planes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 6, 7, 8, generator=g)
    assert float(gradient_loss(x, x)) == 0.0
    assert float(gradient_loss(x + 3.0, x)) < 1e-10  # an offset has no gradient
    ramp = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1, 1) * 0.5
    # a slope of 0.5 along axis x appears in the axial (x, y) and coronal (x, z) planes: 2 × 0.5²
    torch.testing.assert_close(gradient_loss(x + ramp, x), torch.tensor(0.5), rtol=1e-5, atol=1e-6)
    assert float(gradient_loss(x, torch.randn(x.shape, generator=g))) > 0


# ----- masking --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5])
def test_hybrid_masking_masks_the_top_k_and_their_neighbours(ratio):
    grid, k_codes, mask_id = (4, 4, 4), 64, 64
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, k_codes, (3, 64), generator=g)
    importance = torch.rand(3, 64, generator=g)
    m = hybrid_mask(
        tokens,
        importance,
        grid,
        mask_id=mask_id,
        num_codes=k_codes,
        topk_ratio=ratio,
        replace_prob=0.0,
        mask_ratio=torch.zeros(3),
        generator=g,
    )
    top = top_important(importance, ratio)
    assert top.sum(1).tolist() == [round(ratio * 64)] * 3
    expected = dilate(top, grid)
    assert torch.equal(m.masked, expected) and torch.equal(m.important, expected)
    assert torch.equal(m.inputs == mask_id, expected)
    vol = top.view(3, *grid)
    for b, x, y, z in vol.nonzero().tolist():  # every face neighbour of an important token is masked
        for dx, dy, dz in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]:
            p = (x + dx, y + dy, z + dz)
            if all(0 <= c < 4 for c in p):
                assert m.masked.view(3, *grid)[b, p[0], p[1], p[2]]
    assert torch.equal(m.inputs[~m.masked], tokens[~m.masked])  # nothing else changed
    if ratio == 0.0:
        assert not m.masked.any()


def test_schedule_masks_and_unimportant_tokens_get_random_codes():
    grid, k_codes = (4, 4, 4), 16
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, k_codes, (4, 64), generator=g)
    m = hybrid_mask(
        tokens,
        torch.rand(4, 64, generator=g),
        grid,
        mask_id=k_codes,
        num_codes=k_codes,
        topk_ratio=0.0,
        replace_prob=1.0,
        mask_ratio=torch.tensor([0.0, 0.25, 0.5, 1.0]),
        generator=g,
    )
    assert m.masked.sum(1).tolist() == [0, 16, 32, 64]
    assert torch.equal(m.replaced, ~m.masked)  # replace_prob 1: every visible token replaced
    replaced = m.inputs[m.replaced]
    assert replaced.min() >= 0 and replaced.max() < k_codes  # codes of the codebook, never [MASK]
    assert (replaced != tokens[m.replaced]).any()
    assert torch.equal(m.loss_positions, torch.ones_like(m.masked))


# ----- attention and samplers -----------------------------------------------------------------------------------------
def test_causal_attention_equals_the_masked_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64) for _ in range(3))
    for i in range(9):
        torch.testing.assert_close(
            attention(q, k, v, causal=True)[:, :, i],
            explicit_attention(q[:, :, i : i + 1], k[:, :, : i + 1], v[:, :, : i + 1])[:, :, 0],
        )


@pytest.mark.parametrize("steps", [4, 8, 16])
def test_maskgit_fills_every_token_in_n_steps(net, steps):
    calls, masked_left = [], []
    labels = torch.tensor([1, 2])

    def fn(tokens):
        masked_left.append(int((tokens == net.mask_id).sum()))
        return net.maskgit(tokens, labels)

    with torch.no_grad():
        out = maskgit_decode(
            fn, net.num_tokens, net.mask_id, steps, generators(0, 2), "cpu", lambda d, t: calls.append((d, t))
        )
    assert calls == [(i, steps) for i in range(1, steps + 1)]
    assert out.tokens.shape == (2, 64) and not (out.tokens == net.mask_id).any()
    assert out.tokens.min() >= 0 and out.tokens.max() < net.num_codes
    assert masked_left[0] == 128 and masked_left == sorted(masked_left, reverse=True)
    assert len(set(masked_left)) == steps  # every step unmasks something


def test_classifier_free_guidance_changes_the_logits(net):
    tokens = torch.full((1, 64), net.mask_id)
    with torch.no_grad():
        plain = guided(net.maskgit, torch.tensor([2]), 0.0)(tokens)
        strong = guided(net.maskgit, torch.tensor([2]), 3.0)(tokens)
    assert plain.shape == strong.shape == (1, 64, net.num_codes) and not torch.allclose(plain, strong)


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_ar_with_kv_cache_equals_ar_without(net, guidance):
    labels = torch.tensor([1, 2, 0])
    calls = []
    with torch.no_grad():
        cached = ar_decode(
            net.ar, labels, generators(4, 3), lambda d, t: calls.append(d), guidance=guidance, keep_logits=True
        )
        plain = ar_decode(net.ar, labels, generators(4, 3), use_cache=False, guidance=guidance, keep_logits=True)
    assert calls == list(range(1, 65))
    assert torch.equal(cached.tokens, plain.tokens)
    torch.testing.assert_close(cached.logits, plain.logits, rtol=1e-5, atol=1e-5)
    # the cached logits are those of one full causal pass over the decoded sequence
    if guidance == 0:
        with torch.no_grad():
            torch.testing.assert_close(net.ar(cached.tokens, labels), cached.logits, rtol=1e-5, atol=1e-5)


# ----- runner ---------------------------------------------------------------------------------------------------------
def test_the_loader_knows_the_family(entry):
    assert FAMILIES["vqgan"].generator == "tumorsynth.models.vqgan.runner:VQGANGenerator"
    assert entry.task == "class_to_roi" and entry.classes == ("LGG", "HGG") and entry.inputs == ()
    assert [(s.name, s.default_steps, s.min_steps, s.max_steps) for s in entry.samplers] == [
        ("maskgit", 8, 4, 16),
        ("ar", 64, 64, 64),
    ]
    assert entry.default_sampler == "maskgit"


@pytest.mark.parametrize("sampler,steps", [("maskgit", 6), ("ar", 64)])
def test_outputs_on_the_roi_grid(generator, entry, sampler, steps):
    calls = []
    p = params(sampler=sampler, steps=steps)
    out = generator.generate(p, {}, lambda d, t: calls.append((d, t)))
    assert generator.total_steps(p) == steps and calls == [(i, steps) for i in range(1, steps + 1)]
    assert [(v.sample_index, v.modality) for v in out] == [(0, "flair"), (1, "flair")]
    spacing = entry.output_spacing[0]
    for v in out:
        assert v.data.shape == (16, 16, 16) and v.data.dtype == np.float32 and v.reference is None
        assert np.isfinite(v.data).all() and v.data.min() >= -1 and v.data.max() <= 1
        np.testing.assert_allclose(np.diag(v.affine)[:3], [spacing] * 3)
        centre = v.affine @ np.array([7.5, 7.5, 7.5, 1.0])
        np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)  # the ROI centre is the world origin


@pytest.mark.parametrize("sampler,steps", [("maskgit", 8), ("ar", 64)])
def test_sample_i_is_the_same_alone_or_in_a_batch(generator, sampler, steps):
    def run(n, seed):
        p = params(num_samples=n, seed=seed, sampler=sampler, steps=steps, options={"guidance": 0.5})
        return [v.data for v in generator.generate(p, {}, lambda d, t: None)]

    three = run(3, 3)
    np.testing.assert_array_equal(run(3, 3)[1], three[1])
    np.testing.assert_allclose(run(1, 3)[0], three[0], atol=1e-5)
    np.testing.assert_allclose(run(1, 5)[0], three[2], atol=1e-5)
    assert not np.array_equal(three[0], three[1])


def test_the_runner_refuses_a_missing_or_unknown_class_and_bad_requests(generator):
    nothing = lambda d, t: None
    for bad, field in [
        ({"tumor_class": None}, "tumor_class"),
        ({"tumor_class": "meningioma"}, "tumor_class"),
        ({"modalities": ("t1",)}, "modalities"),
        ({"sampler": "ddim"}, "sampler"),
        ({"steps": 3}, "steps"),
        ({"steps": 17}, "steps"),
        ({"sampler": "ar", "steps": 8}, "steps"),
        ({"options": {"cfg": 2}}, "options.cfg"),
    ]:
        with pytest.raises(InvalidRequest) as exc:
            generator.generate(params(**bad), {}, nothing)
        assert exc.value.errors[0].field == field
        if field == "tumor_class":
            assert "LGG, HGG" in str(exc.value.errors[0].message)


def test_a_canceling_progress_stops_generation(generator):
    calls = []

    def cancel_at_two(done, total):
        calls.append(done)
        if done == 2:
            raise JobCanceled("canceled by the user")

    for sampler, steps in (("maskgit", 8), ("ar", 64)):
        calls.clear()
        with pytest.raises(JobCanceled):
            generator.generate(params(sampler=sampler, steps=steps), {}, cancel_at_two)
        assert calls == [1, 2]


def test_class_reaches_the_transformer(net):
    tokens = torch.full((2, 64), net.mask_id)
    with torch.no_grad():
        logits = net.maskgit(tokens, torch.tensor([1, 2]))
        ar = net.ar(torch.zeros(2, 64, dtype=torch.long), torch.tensor([1, 2]))
    assert not torch.allclose(logits[0], logits[1]) and not torch.allclose(ar[0], ar[1])
    assert math.prod(net.latent_shape) == net.num_tokens == 64
