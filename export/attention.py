"""Multi-head attention as one ONNX `Attention` node (opset 23), shared by every exported transformer.

`attend` calls `torch.onnx.ops.attention`: in PyTorch it runs scaled dot-product attention, and
the exporter writes it as a single `Attention` node. ONNX Runtime then runs a whole attention
block (head split, past + new keys, scaled scores, mask, softmax, weighted sum, head merge) as
one kernel, where the written-out form took about fourteen nodes (docs/benchmarks.md,
"Attention as one ONNX node", has what that changes in time).

Queries, keys and values are (B, T, D) with the heads side by side, as the projections produce
them. The self-attention cache (`past`, `present`) is (B, H, P, Dh), as the ONNX op defines it.
Cross-attention keys and values stay (B, S, D): the op splits them itself.

Training (dropout on the attention probabilities) runs the same arithmetic through
`scaled_dot_product_attention`, which takes a dropout rate; the op itself has none.

Shapes: B batch, T queries, S keys, P past length, D model width, H heads, Dh = D / H.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.onnx import ops

KV = tuple[Tensor, Tensor]

# `qk_matmul_output_mode` of ONNX Attention that returns the probabilities after softmax.
PROBABILITIES = 3


def _heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape  # (B, T, D) -> (B, H, T, Dh)
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    heads: int,
    past: KV | None = None,
    probabilities: bool = False,
    dropout: float = 0.0,
) -> tuple[Tensor, KV, Tensor | None]:
    """Scaled dot-product attention of q (B, T, D) over k, v (B, S, D), after `past` if given.

    mask: bool (B, 1, T, P + S), True = attend (ONNX Runtime wants T at full length). Returns
    the output (B, T, D), the keys and values attended over as (B, H, P + S, Dh) each (the next
    step's cache), and with `probabilities` the softmax (B, H, T, P + S). A `dropout` above 0
    (training) applies to the probabilities, which are then not returned.
    """
    if dropout > 0.0:
        if probabilities:
            raise ValueError("attention probabilities are not returned under dropout (training)")
        kh, vh = _heads(k, heads), _heads(v, heads)
        if past is not None:
            kh, vh = torch.cat([past[0], kh], dim=2), torch.cat([past[1], vh], dim=2)
        out = F.scaled_dot_product_attention(_heads(q, heads), kh, vh, attn_mask=mask, dropout_p=dropout)
        return out.transpose(1, 2).reshape(q.shape), (kh, vh), None
    past_key, past_value = past if past is not None else (None, None)
    out, present_key, present_value, probs = ops.attention(
        q,
        k,
        v,
        mask,
        past_key,
        past_value,
        q_num_heads=heads,
        kv_num_heads=heads,
        qk_matmul_output_mode=PROBABILITIES if probabilities else 0,
    )
    if not probabilities:
        return out, (present_key, present_value), None
    # ONNX shape inference (onnx 1.23) sizes the probabilities' key axis as 0; a reshape to the
    # keys' own length leaves that axis to be read at run time.
    return out, (present_key, present_value), probs.reshape(q.shape[0], heads, q.shape[1], present_key.shape[2])


def padding_mask(attention_mask: Tensor, queries: int) -> Tensor:
    """(B, S) real-token mask of the keys -> (B, 1, T, S) bool for T queries. ONNX Runtime's
    Attention kernel wants the query axis at full length, not broadcast."""
    return attention_mask.bool()[:, None, None, :].expand(-1, -1, queries, -1)


def causal_mask(decoder_attention_mask: Tensor, new_tokens: int) -> Tensor:
    """(B, P + T) real-token mask of past + new positions -> (B, 1, T, P + T) bool: new token i
    sits at cache index P + i and sees every real index up to its own."""
    total = decoder_attention_mask.shape[1]
    device = decoder_attention_mask.device
    past = total - new_tokens
    causal = torch.arange(total, device=device)[None, :] <= (torch.arange(new_tokens, device=device)[:, None] + past)
    return decoder_attention_mask.bool()[:, None, None, :] & causal
