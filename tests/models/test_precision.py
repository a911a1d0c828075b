"""Serving numerics: bf16 weights stay within tolerance of fp32; batch-invariant Linear layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tumorsynth.models.precision import (
    RowwiseLinear,
    make_batch_invariant,
    weights_dtype,
)

from ..workers.test_batching import JOBS, alone, live


def test_weights_dtype():
    cpu = torch.device("cpu")
    assert weights_dtype("auto", cpu) == torch.float32  # bf16 only where CUDA has it
    assert weights_dtype("fp32", cpu) == torch.float32
    assert weights_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        weights_dtype("fp16", cpu)


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    from tumorsynth.models.ldm.configs import create_untrained

    return create_untrained(tmp_path_factory.mktemp("models") / "ldm", preset="tiny", seed=0)


def test_bf16_weights_stay_within_tolerance_of_fp32(entry):
    """The whole job (conditioning, 10 DDPM steps, decoding, back to the mask's grid) with the network in bf16:
    z-score outputs within 0.1 z everywhere and 2 % of their RMS on average (measured: 0.03 z, 0.9 %)."""
    fp32, bf16 = live(entry), live(entry, precision="bf16")
    assert next(bf16.network.parameters()).dtype == torch.bfloat16
    for params, mask in JOBS[:2]:
        for a, b in zip(alone(fp32, params, mask), alone(bf16, params, mask)):
            assert b.data.dtype == np.float32 and a.data.shape == b.data.shape
            diff = a.data - b.data
            assert np.abs(diff).max() < 0.1
            assert np.sqrt((diff**2).mean()) < 0.02 * np.sqrt((a.data**2).mean())
            assert np.abs(diff).max() > 0  # it did run in bf16


def test_rowwise_linear_is_batch_invariant_and_keeps_the_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.SiLU(), nn.Linear(256, 64))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(5, 64)
    before = net(x)
    make_batch_invariant(net)
    assert all(isinstance(m, RowwiseLinear) for m in (net[0], net[2]))
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    batch = net(x)
    torch.testing.assert_close(batch, before)
    for i in range(5):
        assert torch.equal(net(x[i : i + 1]), batch[i : i + 1])
    tokens = torch.randn(2, 7, 64)  # 3D inputs (attention's tokens) go through the ordinary kernel
    assert torch.equal(net[0](tokens), F.linear(tokens, net[0].weight, net[0].bias))
