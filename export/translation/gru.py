"""GRU encoder-decoder with additive (Bahdanau) attention: the classic translation baseline.

Bidirectional GRU encoder, GRU-cell decoder whose state is `h`; the attention query is the
previous state (Bahdanau et al., 2015). The encoder precomputes the attention keys W_e·states
once, so a decoder step costs one GRU cell, one additive score over the source and the output
projection (tied with the embedding).

Padding never changes a row's result: the backward direction runs over each row reversed
within its own length, so it starts on the row's last real token, not on padding.

Shapes: B batch, S source length, E embedding, H encoder units per direction, A attention size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from seqcast.export.transformer import MASK_VALUE


@dataclass(frozen=True)
class GruConfig:
    vocab_size: int = 8000
    embed_dim: int = 256
    hidden: int = 256  # encoder units per direction, and decoder units
    attention_dim: int = 256
    dropout: float = 0.2
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def reverse_within_length(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverses each row's first `lengths[b]` steps of x (B, S, F); padding stays in place.

    The mapping is its own inverse.
    """
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, S)
    source = lengths.unsqueeze(1) - 1 - steps
    source = torch.where(source >= 0, source, steps)  # (B, S)
    return x.gather(1, source.unsqueeze(-1).expand(-1, -1, x.shape[2]))


class GruAttention(nn.Module):
    def __init__(self, cfg: GruConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        # The embedding is also the output projection: N(0, 1/E) keeps the first logits near uniform.
        nn.init.normal_(self.embed.weight, std=cfg.embed_dim**-0.5)
        with torch.no_grad():
            self.embed.weight[cfg.pad_id].zero_()
        self.forward_rnn = nn.GRU(cfg.embed_dim, cfg.hidden, batch_first=True)
        self.backward_rnn = nn.GRU(cfg.embed_dim, cfg.hidden, batch_first=True)
        self.init_state = nn.Linear(2 * cfg.hidden, cfg.hidden)
        self.key_proj = nn.Linear(2 * cfg.hidden, cfg.attention_dim, bias=False)
        self.query_proj = nn.Linear(cfg.hidden, cfg.attention_dim)
        self.score = nn.Linear(cfg.attention_dim, 1, bias=False)
        self.cell = nn.GRUCell(cfg.embed_dim + 2 * cfg.hidden, cfg.hidden)
        self.readout = nn.Linear(cfg.hidden + 2 * cfg.hidden + cfg.embed_dim, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """input_ids, attention_mask (B, S), right-padded.

        Returns encoder states (B, S, 2H), attention keys (B, S, A), initial decoder state (B, H).
        """
        lengths = attention_mask.sum(dim=1)
        x = self.dropout(self.embed(input_ids))
        fwd, _ = self.forward_rnn(x)
        bwd, _ = self.backward_rnn(reverse_within_length(x, lengths))
        bwd = reverse_within_length(bwd, lengths)
        states = torch.cat([fwd, bwd], dim=-1) * attention_mask.unsqueeze(-1).to(fwd.dtype)
        last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, fwd.shape[2])
        summary = torch.cat([fwd.gather(1, last).squeeze(1), bwd[:, 0]], dim=-1)  # (B, 2H)
        return states, self.key_proj(states), torch.tanh(self.init_state(summary))

    def step(
        self, input_ids: Tensor, state: Tensor, states: Tensor, keys: Tensor, encoder_attention_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One decoder step. input_ids (B, 1), state (B, H) -> logits (B, 1, V), new state (B, H)."""
        emb = self.dropout(self.embed(input_ids[:, 0]))  # (B, E)
        scores = self.score(torch.tanh(self.query_proj(state).unsqueeze(1) + keys)).squeeze(-1)  # (B, S)
        scores = scores.masked_fill(encoder_attention_mask == 0, MASK_VALUE)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), states).squeeze(1)  # (B, 2H)
        new_state = self.cell(torch.cat([emb, context], dim=-1), state)
        out = torch.tanh(self.readout(self.dropout(torch.cat([new_state, context, emb], dim=-1))))
        logits = torch.matmul(out, self.embed.weight.t()).unsqueeze(1)  # (B, 1, V)
        return logits, new_state

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for target inputs tgt_in (B, T)."""
        states, keys, state = self.encode(src, src_mask)
        logits = []
        for t in range(tgt_in.shape[1]):
            step_logits, state = self.step(tgt_in[:, t : t + 1], state, states, keys, src_mask)
            logits.append(step_logits)
        return torch.cat(logits, dim=1)
