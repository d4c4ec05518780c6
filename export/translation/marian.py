"""Export wrappers for a Hugging Face `MarianMTModel`: encoder and decoder-step graphs with explicit state.

The wrappers hold the HF model's own modules (so its weights, loaded by transformers) but do
the computation here, in the shape of seqcast's bundle contract: the decoder step takes per-row
`position_ids` and a `decoder_attention_mask` over past + new tokens, and past/present
self-attention K/V as plain tensors; the encoder computes every decoder layer's cross-attention
K/V once. HF's own cache objects cannot take per-row positions or holes in the cache, which
in-flight batching needs, so they are not used.

Marian details reproduced from `transformers.models.marian.modeling_marian`: post-layer-norm
blocks (residual, then layer norm), the configured activation, `embed_scale` (sqrt(d_model) with
`scale_embedding`), a fixed sinusoidal table with sin in the first half and cos in the second,
gathered per row by position id, `final_logits_bias`, separate or shared embeddings, and no
final encoder or decoder layer norm. Tokens generation must never produce (the pad id, and
single-token `bad_words_ids`) get a large negative logit in the graph, as HF's generate does:
it is their entry of the logits bias, so suppressing them costs no node of its own.

The decoder also returns `alignments`: one cross-attention layer's probabilities, averaged over
heads, (B, T, S); zero on padded source positions.

Shapes: B batch, S source length, T new tokens, P past length, D model width, H heads,
Dh head size, V target vocabulary.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seqcast.bundle.manifest import TensorSpec
from seqcast.export.attention import KV, attend, causal_mask, padding_mask
from seqcast.export.graphs import F32, I64, GraphPair, default_alignment_layer, kv_specs, split_kv
from seqcast.export.translation.hf_checkpoint import MarianCheckpoint

# Logit of tokens that must never be generated: finite, so parity differences stay numbers. It is
# their entry of the logits bias, and float32 rounds x + SUPPRESSED_LOGIT to SUPPRESSED_LOGIT for
# every |x| below 2**75, so the bias Add gives exactly this value without a masking node per step.
SUPPRESSED_LOGIT = -1e30


def sinusoidal_table(positions: int, dim: int) -> Tensor:
    """Marian's position table (positions, dim): sin of even-index angles first, cos of odd second.

    Computed exactly as `MarianSinusoidalPositionalEmbedding.create_weight` does (float64 numpy,
    then float32), so the table is bit-identical to HF's.
    """
    position_enc = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for pos in range(positions)])
    out = torch.empty(positions, dim, dtype=torch.float32)
    half = dim // 2
    out[:, :half] = torch.FloatTensor(np.sin(position_enc[:, 0::2]))
    out[:, half:] = torch.FloatTensor(np.cos(position_enc[:, 1::2]))
    return out


def activation(name: str) -> nn.Module:
    """transformers' ACT2FN entries that Marian configs use."""
    return {
        "relu": nn.ReLU(),
        "gelu": nn.GELU(),
        "gelu_new": nn.GELU(approximate="tanh"),
        "swish": nn.SiLU(),
        "silu": nn.SiLU(),
    }[name]


def _attention(
    attn: nn.Module, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, heads: int, past: KV | None = None, probabilities: bool = False
) -> tuple[Tensor, KV, Tensor | None]:
    """HF MarianAttention on explicit K/V: x (B, T, D) attends over k, v (B, S, D) after `past`
    (B, H, P, Dh); mask (B, 1, T, P + S) bool, True = attend. Returns the output (B, T, D),
    the keys and values attended over (B, H, P + S, Dh), and the probabilities if asked."""
    out, kv, probs = attend(attn.q_proj(x), k, v, mask, heads, past, probabilities)
    return attn.out_proj(out), kv, probs


def _project_kv(attn: nn.Module, x: Tensor) -> KV:
    return attn.k_proj(x), attn.v_proj(x)


class MarianEncoderGraph(nn.Module):
    """(input_ids, encoder_attention_mask) -> encoder_hidden_states, then per decoder layer cross K, V."""

    def __init__(self, hf_model: Any) -> None:
        super().__init__()
        cfg = hf_model.config
        self.encoder = hf_model.model.encoder
        self.decoder_layers = hf_model.model.decoder.layers
        self.heads = cfg.encoder_attention_heads
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.act = activation(cfg.activation_function)
        self.register_buffer("positions", sinusoidal_table(cfg.max_position_embeddings, cfg.d_model), persistent=False)

    def forward(self, input_ids: Tensor, encoder_attention_mask: Tensor) -> tuple[Tensor, ...]:
        s = input_ids.shape[1]
        x = self.encoder.embed_tokens(input_ids) * self.scale + self.positions[:s]
        mask = padding_mask(encoder_attention_mask, s)  # (B, 1, S, S)
        for layer in self.encoder.layers:
            attended = _attention(layer.self_attn, x, *_project_kv(layer.self_attn, x), mask, self.heads)[0]
            x = layer.self_attn_layer_norm(x + attended)
            x = layer.final_layer_norm(x + layer.fc2(self.act(layer.fc1(x))))
        cross = [_project_kv(layer.encoder_attn, x) for layer in self.decoder_layers]
        return (x, *(t for kv in cross for t in kv))


class MarianDecoderGraph(nn.Module):
    """One decoder call. Inputs: input_ids, position_ids, decoder_attention_mask,
    encoder_attention_mask, then per layer past self K/V, then per layer cross K/V.
    Outputs: logits (B, T, V), per layer present self K/V (B, H, P + T, Dh), alignments (B, T, S).
    Cross K/V are (B, S, D)."""

    def __init__(self, hf_model: Any, suppressed: tuple[int, ...], alignment_layer: int) -> None:
        super().__init__()
        cfg = hf_model.config
        self.decoder = hf_model.model.decoder
        self.lm_head = hf_model.lm_head
        logits_bias = hf_model.final_logits_bias.detach().clone()
        logits_bias[..., list(suppressed)] = SUPPRESSED_LOGIT
        self.register_buffer("logits_bias", logits_bias, persistent=False)
        self.heads = cfg.decoder_attention_heads
        self.layers = len(self.decoder.layers)
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.act = activation(cfg.activation_function)
        self.alignment_layer = alignment_layer
        self.register_buffer("positions", sinusoidal_table(cfg.max_position_embeddings, cfg.d_model), persistent=False)

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        decoder_attention_mask: Tensor,
        encoder_attention_mask: Tensor,
        *kv: Tensor,
    ) -> tuple[Tensor, ...]:
        past, cross = split_kv(kv, self.layers)
        self_mask = causal_mask(decoder_attention_mask, input_ids.shape[1])  # (B, 1, T, P + T)
        cross_mask = padding_mask(encoder_attention_mask, input_ids.shape[1])  # (B, 1, T, S)

        # Per-row positions: a gather from the fixed table, (B, T, D).
        x = self.decoder.embed_tokens(input_ids) * self.scale + self.positions[position_ids]
        present: list[Tensor] = []
        alignments = None
        for i, (layer, layer_past, (ck, cv)) in enumerate(zip(self.decoder.layers, past, cross)):
            attended, kv, _ = _attention(layer.self_attn, x, *_project_kv(layer.self_attn, x), self_mask, self.heads, layer_past)
            x = layer.self_attn_layer_norm(x + attended)
            attended, _, probs = _attention(
                layer.encoder_attn, x, ck, cv, cross_mask, self.heads, probabilities=i == self.alignment_layer
            )
            x = layer.encoder_attn_layer_norm(x + attended)
            x = layer.final_layer_norm(x + layer.fc2(self.act(layer.fc1(x))))
            present += list(kv)
            if probs is not None:
                alignments = probs.mean(dim=1)  # (B, T, S)
        logits = self.lm_head(x) + self.logits_bias  # final_logits_bias, suppressed tokens at SUPPRESSED_LOGIT
        return (logits, *present, alignments)


def marian_graphs(hf_model: Any, checkpoint: MarianCheckpoint, alignment_layer: int | None = None) -> GraphPair:
    """Wrappers and manifest specs of an imported Marian model."""
    cfg = hf_model.config
    layers = cfg.decoder_layers
    if cfg.encoder_layers < 1 or layers < 1:
        raise ValueError("a Marian model needs at least one encoder and one decoder layer")
    layer = default_alignment_layer(layers) if alignment_layer is None else alignment_layer
    if not 0 <= layer < layers:
        raise ValueError(f"alignment layer {layer} is outside 0..{layers - 1}")
    heads = cfg.decoder_attention_heads
    encoder_spec, decoder_spec = kv_specs(
        layers, heads, cfg.d_model // heads, cfg.d_model,
        source=TensorSpec(name="input_ids", dtype=I64, shape=["batch", "source_length"]),
        step_input=TensorSpec(name="input_ids", dtype=I64, shape=["batch", "new_tokens"]),
        step_output=TensorSpec(name="logits", dtype=F32, shape=["batch", "new_tokens", checkpoint.decoder_vocab_size]),
        alignments=True,
    )
    return GraphPair(
        MarianEncoderGraph(hf_model).eval(),
        MarianDecoderGraph(hf_model, checkpoint.generation.suppressed, layer).eval(),
        encoder_spec,
        decoder_spec,
    )
