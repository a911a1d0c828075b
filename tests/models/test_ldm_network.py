"""The LDM network: shapes, rebuild from its config, checkpoint round trip."""

from __future__ import annotations

import json

import pytest
import torch

from tumorsynth.errors import CheckpointError
from tumorsynth.models.checkpoints import load_into
from tumorsynth.models.ldm.configs import PRESETS, build_network, create_untrained
from tumorsynth.models.ldm.network import MaskConditionedLDM
from tumorsynth.models.registry import ModelRegistry


@pytest.fixture(scope="module")
def net() -> MaskConditionedLDM:
    torch.manual_seed(0)
    return build_network(PRESETS["tiny"]).eval()


def test_shapes_through_the_tiny_network(net):
    grid = tuple(PRESETS["tiny"]["output"]["shape"])
    x = torch.rand(2, 4, *grid)
    with torch.no_grad():
        z = net.encode(x)
        assert z.shape == (2, 8, *(n // 4 for n in grid))
        assert net.decode(z).shape == x.shape
        cond = net.condition(torch.ones(2, 3, *grid))
        assert cond.shape == (2, 3, *z.shape[2:])
        torch.testing.assert_close(cond, torch.ones_like(cond))
        eps = net.denoise(z, torch.tensor([999, 0]), cond, torch.tensor([0, 2]))
    assert eps.shape == z.shape


def test_scale_factor_is_saved_and_applied(net):
    z = torch.randn(1, 8, 8, 8, 4)
    with torch.no_grad():
        ref = net.decode(z)
        net.scale_factor.fill_(2.0)
        try:
            assert "scale_factor" in net.state_dict()
            torch.testing.assert_close(net.decode(2 * z), ref)
        finally:
            net.scale_factor.fill_(1.0)


def test_latent_shape_refuses_grids_that_do_not_divide(net):
    with pytest.raises(ValueError, match="divisible by 4"):
        net.latent_shape((30, 32, 16))


def test_presets_are_json_and_rebuild():
    for name, cfg in PRESETS.items():
        assert json.loads(json.dumps(cfg)) == cfg, name
    paper = PRESETS["paper"]
    assert paper["output"]["shape"] == [128, 128, 64]
    assert paper["output"]["spacing"] == [1.5, 1.5, 2.5]
    with torch.device("meta"):
        big = build_network(paper)
    assert big.latent_shape((128, 128, 64)) == (32, 32, 16)
    assert big.unet.block_out_channels[0] == 352


def test_checkpoint_round_trip_and_tamper(tmp_path):
    entry = create_untrained(tmp_path / "ldm", preset="tiny", seed=3)
    assert entry.id == "ldm/untrained-tiny@1" and entry.trained is False
    assert "UNTRAINED" in (entry.path / "MODEL_CARD.md").read_text().splitlines()[0]
    assert ModelRegistry(tmp_path).get(entry.id).weights_sha256 == entry.weights_sha256

    torch.manual_seed(3)
    original = build_network(entry.config)
    rebuilt = MaskConditionedLDM(**json.loads((entry.path / "config.json").read_text())["network"])
    load_into(rebuilt, entry)
    for (k, a), (_, b) in zip(original.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)

    again = create_untrained(tmp_path / "again", preset="tiny", seed=3)
    assert again.weights_sha256 == entry.weights_sha256  # seeded: the same weights byte for byte

    raw = bytearray(entry.weights_path.read_bytes())
    raw[-1] ^= 0xFF
    entry.weights_path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        load_into(build_network(entry.config), entry)


def spade_pair(seed: int = 0) -> tuple[MaskConditionedLDM, MaskConditionedLDM]:
    torch.manual_seed(seed)
    plain = build_network(PRESETS["tiny"]).eval()
    spade = MaskConditionedLDM(**PRESETS["tiny"]["network"], ae_decoder="spade", ae_spade_channels=8).eval()
    return plain, spade


def test_a_spade_decoder_starts_as_the_plain_decoder_it_was_made_from():
    plain, spade = spade_pair()
    with torch.no_grad():  # trained-looking norms: scale and shift away from MONAI's 1 and 0
        for name, p in plain.autoencoder.decoder.named_parameters():
            if ".norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    spade.spade_from_plain(plain.autoencoder.state_dict())
    grid = tuple(PRESETS["tiny"]["output"]["shape"])
    x, regions = torch.randn(2, 4, *grid), (torch.rand(2, 3, *grid) > 0.5).float()
    with torch.no_grad():
        ref = plain.autoencoder.reconstruct(x)
        torch.testing.assert_close(spade.reconstruct(x, regions, torch.tensor([1, 2])), ref, atol=1e-4, rtol=1e-4)
        # the label map reaches the decoder once its modulation weights are not zero
        for name, p in spade.autoencoder.decoder.named_parameters():
            if "mlp_" in name and name.endswith("weight"):
                p.normal_(0, 0.1)
        a = spade.reconstruct(x, regions, torch.tensor([1, 1]))
        b = spade.reconstruct(x, torch.zeros_like(regions), torch.tensor([1, 1]))
        c = spade.reconstruct(x, regions, torch.tensor([2, 2]))
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3


def test_a_spade_decoder_refuses_to_decode_without_the_regions():
    _, spade = spade_pair()
    z = torch.randn(1, 8, 8, 8, 4)
    with pytest.raises(ValueError, match="pass its regions"):
        spade.decode(z)
    grid = tuple(PRESETS["tiny"]["output"]["shape"])
    with torch.no_grad():  # one mask's regions serve a batch of samples; no class = unknown
        assert spade.decode(torch.cat([z, z]), torch.zeros(1, 3, *grid)).shape == (2, 4, *grid)


def test_decoder_labels_are_the_regions_then_the_class_one_hot():
    _, spade = spade_pair()
    regions = torch.rand(3, 3, 4, 4, 2)
    labels = spade.decoder_labels(regions, torch.tensor([0, 1, 2]))
    assert labels.shape == (3, 5, 4, 4, 2)
    torch.testing.assert_close(labels[:, :3], regions)
    assert labels[0, 3:].sum() == 0  # unknown class: no channel set
    assert bool((labels[1, 3] == 1).all() and (labels[1, 4] == 0).all())
    assert bool((labels[2, 4] == 1).all() and (labels[2, 3] == 0).all())


def test_spade_from_plain_refuses_a_different_autoencoder():
    _, spade = spade_pair()
    other = MaskConditionedLDM(**{**PRESETS["tiny"]["network"], "ae_channels": [8, 16, 32]})
    with pytest.raises(ValueError, match="not a plain AutoencoderKL"):
        spade.spade_from_plain(other.autoencoder.state_dict())
    with pytest.raises(ValueError, match="ae_decoder"):
        MaskConditionedLDM(**PRESETS["tiny"]["network"], ae_decoder="film")
