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
