from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import SABlock

from tumorsynth.models.nn.attention import attention, explicit_attention


def test_sdpa_equals_the_explicit_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 37, 16, generator=g, dtype=torch.float64) for _ in range(3))
    ref = explicit_attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v), ref)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), ref)


def test_monai_flash_and_explicit_attention_blocks_agree():
    torch.manual_seed(0)
    flash = SABlock(hidden_size=32, num_heads=4, qkv_bias=True, use_flash_attention=True).eval()
    plain = SABlock(hidden_size=32, num_heads=4, qkv_bias=True, use_flash_attention=False).eval()
    plain.load_state_dict(flash.state_dict())
    x = torch.randn(2, 50, 32)
    torch.testing.assert_close(flash(x), plain(x), rtol=1e-5, atol=1e-5)
