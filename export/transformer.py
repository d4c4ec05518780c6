"""Transformer encoder-decoder for translation, written out with an explicit KV-cache API.

Pre-layer-norm blocks (residual + layer norm), multi-head scaled dot-product attention with
explicit Q/K/V projections, sinusoidal positions computed from position ids (so each row of a
batch can sit at its own position), tied input/output embeddings.

The decoder has one entry point, `decode`, used three ways:
  * training and uncached inference: the whole target prefix, empty past;
  * cached inference: one new token per row, past K/V from the previous call;
  * in the exported `decoder.onnx`: exactly this function, so the graph and the PyTorch
    reference share one code path.

Shapes: B batch, S source length, T new target tokens, P past length, D model width,
H heads, Dh = D / H head size, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from seqcast.export.attention import KV, attend, causal_mask, padding_mask

# Added to masked attention scores of the recurrent forecasters and the GRU: exp() underflows to
# exactly 0, and a fully masked row (never produced by the server) stays finite.
MASK_VALUE = -1e9


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    # Special token ids, shared by source and target (one vocabulary).
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_embedding(positions: Tensor, d_model: int) -> Tensor:
    """(...,) integer positions -> (..., d_model) sin/cos features (Vaswani et al., 2017)."""
    half = d_model // 2
    inv_freq = torch.exp(
        torch.arange(half, dtype=torch.float32, device=positions.device) * (-math.log(10000.0) / half)
    )
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # (..., half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def project_kv(self, x: Tensor) -> KV:
        """(B, S, D) -> keys and values, each (B, S, D)."""
        return self.k_proj(x), self.v_proj(x)

    def forward(
        self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, past: KV | None = None, probabilities: bool = False
    ) -> tuple[Tensor, KV, Tensor | None]:
        """x (B, T, D) attends over k, v (B, S, D), after `past` (B, H, P, Dh) if given; mask
        (B, 1, T, P + S) bool, True = attend. Returns the output (B, T, D), the keys and
        values attended over (B, H, P + S, Dh), and with `probabilities` the attention
        probabilities (B, H, T, P + S)."""
        out, kv, probs = attend(
            self.q_proj(x), k, v, mask, self.n_heads, past, probabilities,
            dropout=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out), kv, probs


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.attn(h, *self.attn.project_kv(h), mask)[0])
        return x + self.dropout(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, past: KV, self_mask: Tensor, cross: KV, cross_mask: Tensor, probabilities: bool = False
    ) -> tuple[Tensor, KV, Tensor | None]:
        """Returns the new hidden states, the self-attention K/V with this call's tokens appended
        (B, H, P + T, Dh), and with `probabilities` the cross-attention probabilities (B, H, T, S)."""
        h = self.norm1(x)
        attended, kv, _ = self.self_attn(h, *self.self_attn.project_kv(h), self_mask, past=past)
        x = x + self.dropout(attended)
        attended, _, probs = self.cross_attn(self.norm2(x), cross[0], cross[1], cross_mask, probabilities=probabilities)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.ffn(self.norm3(x)))
        return x, kv, probs


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[cfg.pad_id].zero_()
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def _embed(self, ids: Tensor, positions: Tensor) -> Tensor:
        x = self.embed(ids) * math.sqrt(self.cfg.d_model) + sinusoidal_embedding(positions, self.cfg.d_model)
        return self.dropout(x)

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, list[KV]]:
        """input_ids, attention_mask (B, S), mask 1 = token, 0 = padding (right-padded).

        Returns encoder states (B, S, D) and, per decoder layer, the cross-attention K/V
        (B, S, D): computed once here instead of at every decoder step.
        """
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self._embed(input_ids, positions)
        mask = padding_mask(attention_mask, input_ids.shape[1])  # (B, 1, S, S)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        states = self.encoder_norm(x)
        cross = [layer.cross_attn.project_kv(states) for layer in self.decoder_layers]
        return states, cross

    def empty_past(self, batch: int) -> list[KV]:
        shape = (batch, self.cfg.n_heads, 0, self.cfg.head_dim)
        device = self.embed.weight.device
        return [(torch.zeros(shape, device=device), torch.zeros(shape, device=device)) for _ in self.decoder_layers]

    def decode(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        decoder_attention_mask: Tensor,
        encoder_attention_mask: Tensor,
        past: list[KV],
        cross: list[KV],
        alignment_layer: int | None = None,
    ) -> tuple[Tensor, list[KV], Tensor | None]:
        """One decoder call over T new tokens per row.

        input_ids, position_ids: (B, T). decoder_attention_mask: (B, P + T), 1 where a past or new
        position holds a real token of this row (0 marks padding in the cache, so rows that
        joined the batch at different times can share one call). encoder_attention_mask: (B, S).
        past: per layer (k, v), each (B, H, P, Dh). cross: per layer (k, v), each (B, S, D).

        Returns logits (B, T, V), per layer the present (k, v), each (B, H, P + T, Dh), and with
        `alignment_layer` that layer's cross-attention probabilities averaged over heads,
        (B, T, S): each row sums to 1 over real source tokens, 0 on padding.
        """
        self_mask = causal_mask(decoder_attention_mask, input_ids.shape[1])  # (B, 1, T, P + T)
        cross_mask = padding_mask(encoder_attention_mask, input_ids.shape[1])  # (B, 1, T, S)
        x = self._embed(input_ids, position_ids)
        present: list[KV] = []
        alignments = None
        for i, (layer, layer_past, layer_cross) in enumerate(zip(self.decoder_layers, past, cross)):
            x, kv, probs = layer(x, layer_past, self_mask, layer_cross, cross_mask, probabilities=i == alignment_layer)
            present.append(kv)
            if probs is not None:
                alignments = probs.mean(dim=1)
        logits = torch.matmul(self.decoder_norm(x), self.embed.weight.t())  # (B, T, V)
        return logits, present, alignments

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for target inputs tgt_in (B, T), right-padded with pad_id."""
        _, cross = self.encode(src, src_mask)
        batch, t = tgt_in.shape
        positions = torch.arange(t, device=src.device).unsqueeze(0).expand(batch, t)
        tgt_mask = (tgt_in != self.cfg.pad_id).long()
        logits, _, _ = self.decode(tgt_in, positions, tgt_mask, src_mask, self.empty_past(batch), cross)
        return logits
