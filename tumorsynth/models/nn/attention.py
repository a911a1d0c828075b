"""Attention: one kernel, ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).

On a GPU SDPA dispatches to the flash or memory-efficient kernels, which never materialise the (N, N) attention
matrix; that is what makes self-attention over 3D latents (2,048 tokens at 16×16×8) affordable. On the CPU it runs
the math kernel.

The LDM family builds its attention from MONAI's blocks rather than from a copy of them. Checked in the installed
MONAI 1.6.1: ``monai/networks/blocks/selfattention.py`` (``SABlock.forward``) and ``crossattention.py``
(``CrossAttentionBlock.forward``) call ``F.scaled_dot_product_attention(query=q, key=k, value=v, scale=self.scale,
...)`` when built with ``use_flash_attention=True``, and otherwise an explicit einsum + softmax.
``SpatialAttentionBlock`` (the attention of ``AutoencoderKL`` and of ``DiffusionModelUNet``'s levels and middle
block) wraps ``SABlock`` and passes ``use_flash_attention`` through, so both networks are built with
``use_flash_attention=True``.

``explicit_attention`` is the reference ``softmax(Q Kᵀ / √d) V`` that a test holds SDPA to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention over (B, H, N, D) tensors via SDPA.

    ``causal`` lets query i see keys 0..i only (SDPA's ``is_causal``, aligned at the top left, so it is meant for
    queries and keys of the same sequence; an incremental decoder with a KV cache passes one query and no flag).
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, N, D)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The textbook ``softmax(Q Kᵀ / √d) V``, for checking SDPA; materialises the (N, M) weights."""
    weights = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, N, M)
    return weights.softmax(dim=-1) @ v  # (B, H, N, D)
