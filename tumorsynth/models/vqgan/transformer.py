"""Stage 2: a class-conditioned transformer over the raster-ordered code tokens.

The sequence is ``[class token, t_1 … t_N]``: the class token is an embedding of the tumour class (index 0 is
"no class", used for classifier-free guidance; class k of the checkpoint's list is k + 1), the code tokens are
embeddings of the codebook indices with one extra [MASK] entry (index ``num_codes``), plus learnt positions.

One class, two uses, chosen by ``causal``:

- ``causal=False``: bidirectional, trained by masked-token modelling; ``forward`` returns logits for every
  position (MaskGIT decoding).
- ``causal=True``: the paper's autoregressive transformer; ``forward`` reads ``[class, t_1 … t_{N-1}]`` and position
  i predicts t_i, so one pass scores the whole sequence. ``step`` decodes one token at a time with a KV cache;
  ``next_logits`` recomputes the whole prefix (the no-cache mode the benchmark compares against).

Attention goes through ``models.nn.attention.attention`` (SDPA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import attention


@dataclass
class KVCache:
    """Keys and values (B, H, T, Dh) per layer, grown one position per ``TokenTransformer.step``."""

    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    length: int = 0


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must divide by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, Dh) ×3
        if cache is not None:
            if t != 1:
                raise ValueError(f"a KV-cached step takes one position at a time, got {t}")
            past_k, past_v = cache.keys[layer], cache.values[layer]
            if past_k is not None and past_v is not None:
                k = torch.cat([past_k, k], dim=2)  # (B, H, T_past + 1, Dh)
                v = torch.cat([past_v, v], dim=2)
            cache.keys[layer], cache.values[layer] = k, v
            causal = False  # the single query is the newest position: it may see every cached key
        out = attention(q, k, v, causal=causal)  # (B, H, T, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal: bool, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal, cache, layer)
        return x + self.mlp(self.norm2(x))  # (B, T, D)


class TokenTransformer(nn.Module):
    def __init__(
        self,
        *,
        num_codes: int,
        num_tokens: int,
        num_classes: int,
        dim: int = 512,
        depth: int = 8,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.num_codes, self.num_tokens, self.num_classes, self.causal = num_codes, num_tokens, num_classes, causal
        self.mask_id = num_codes
        self.token_embed = nn.Embedding(num_codes + 1, dim)
        self.class_embed = nn.Embedding(num_classes + 1, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_codes)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """GPT-2/MaskGIT initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_embed, std=0.02)

    def _embed(self, tokens: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """[class, tokens] with positions: (B, 1 + T, D)."""
        x = torch.cat([self.class_embed(class_labels)[:, None], self.token_embed(tokens)], dim=1)
        return self.drop(x + self.pos_embed[:, : x.shape[1]])

    def _run(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, causal)
        return self.head(self.norm(x))  # (B, T, K)

    def forward(self, tokens: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """Logits (B, N, K) for tokens (B, N) (codes, or [MASK] = ``num_codes``) and class labels (B,)."""
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens per sequence, got {tokens.shape[1]}")
        if self.causal:
            return self._run(self._embed(tokens[:, :-1], class_labels), causal=True)  # position i predicts t_i
        return self._run(self._embed(tokens, class_labels), causal=False)[:, 1:]

    def next_logits(self, prefix: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """Causal only, no cache: logits (B, K) of token ``prefix.shape[1]`` given the prefix (B, T)."""
        self._need_causal()
        return self._run(self._embed(prefix, class_labels), causal=True)[:, -1]

    def new_cache(self) -> KVCache:
        return KVCache([None] * len(self.blocks), [None] * len(self.blocks), 0)

    def step(self, last: torch.Tensor | None, class_labels: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Causal only, with a KV cache: feed the newest position and return the logits (B, K) of the next token.

        The first call (empty cache) feeds the class token and ``last`` is None; later calls feed the token (B,)
        decoded last.
        """
        self._need_causal()
        pos = cache.length
        if pos == 0:
            x = self.class_embed(class_labels)[:, None]  # (B, 1, D)
        else:
            x = self.token_embed(last)[:, None]
        x = self.drop(x + self.pos_embed[:, pos : pos + 1])
        for i, block in enumerate(self.blocks):
            x = block(x, True, cache, i)
        cache.length = pos + 1
        return self.head(self.norm(x))[:, -1]  # (B, K)

    def _need_causal(self) -> None:
        if not self.causal:
            raise ValueError("incremental decoding needs a transformer built with causal=True")


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the positions ``where`` (B, N) bool only."""
    if not where.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[where].float(), targets[where])
