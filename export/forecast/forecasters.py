"""Forecasting models: transformer and LSTM-with-attention encoder-decoders, and AR(p).

All three read scaled values (see `seqcast.bundle.scaling`) and forecast one step per decoder
call, fed the previous step's point forecast (the last observed value at the first step):

* `TransformerForecaster`: a value embedding plus sinusoidal positions, the translation
  transformer's encoder and decoder layers (masked self-attention with the same past/present
  K/V contract, cross-attention), and a quantile head.
* `LstmForecaster`: an LSTM encoder; the decoder is an LSTM cell whose state is `(h, c)`, with
  additive (Bahdanau) or dot-product (Luong) attention over the encoder states, and a quantile
  head.
* `ArForecaster`: a linear autoregression of order p with intercept, fitted by least squares
  (`fit_ar`); its decoder state is the last p - 1 values.

Contexts are right-padded with a mask. Encoder positions count back from each row's last value
(0 = the last observation), so rows of different lengths line up at the forecast origin.

Training mixes teacher forcing (the true previous value fed at each step) with free-running
batches (the model's own median fed back, as at inference), so forecasts do not drift when the
model meets its own errors.

Quantile heads are monotone by construction: the lowest level is a free output and each
higher level adds a softplus, so quantiles never cross.

Shapes: B batch, S context length, T decoder steps in one call, D model width, Q levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from seqcast.export.config import ForecastConfig
from seqcast.export.transformer import KV, MASK_VALUE, DecoderLayer, EncoderLayer, TransformerConfig, sinusoidal_embedding


def monotone(raw: Tensor) -> Tensor:
    """(..., Q) free outputs -> (..., Q) non-decreasing quantiles: q_0 = raw_0, q_k = q_{k-1} + softplus(raw_k)."""
    return torch.cat([raw[..., :1], raw[..., :1] + torch.cumsum(nn.functional.softplus(raw[..., 1:]), dim=-1)], dim=-1)


def pinball_loss(quantiles: Tensor, target: Tensor, levels: Tensor) -> Tensor:
    """Mean pinball loss of quantiles (B, T, Q) against target (B, T) at levels (Q,)."""
    diff = target.unsqueeze(-1) - quantiles
    loss = torch.maximum(levels * diff, (levels - 1) * diff)
    return loss.mean()


def _distance_from_end(mask: Tensor) -> Tensor:
    """(B, S) right-padded mask -> (B, S) steps back from each row's last real value (0 on padding)."""
    lengths = mask.sum(dim=1, keepdim=True)
    steps = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return (lengths - 1 - steps).clamp(min=0)


class TransformerForecaster(nn.Module):
    """Forecasts corrections to seasonal naive: step h's quantiles are the context's value one
    season before it (the value at h mod m of the last season) plus the head's output, a strong
    start for seasonal data that the model learns to correct."""

    def __init__(self, cfg: ForecastConfig, season_length: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.season_length = season_length
        layer_cfg = TransformerConfig(
            vocab_size=1, d_model=cfg.d_model, n_heads=cfg.n_heads, encoder_layers=cfg.layers,
            decoder_layers=cfg.layers, d_ff=cfg.d_ff, dropout=cfg.dropout,
        )
        self.layer_cfg = layer_cfg
        self.encoder_in = nn.Linear(1, cfg.d_model)
        self.decoder_in = nn.Linear(1, cfg.d_model)
        self.encoder_layers = nn.ModuleList(EncoderLayer(layer_cfg) for _ in range(cfg.layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.decoder_layers = nn.ModuleList(DecoderLayer(layer_cfg) for _ in range(cfg.layers))
        self.decoder_norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, len(cfg.quantile_levels))
        self.dropout = nn.Dropout(cfg.dropout)
        self.median = list(cfg.quantile_levels).index(0.5)

    @property
    def n_heads(self) -> int:
        return self.cfg.n_heads

    @property
    def head_dim(self) -> int:
        return self.cfg.d_model // self.cfg.n_heads

    def encode(self, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, list[KV]]:
        """values (B, S) scaled, mask (B, S), every row at least one season long -> encoder states
        (B, S, D), the last season of values (B, m), cross K/V per decoder layer."""
        x = self.encoder_in(values.unsqueeze(-1)) + sinusoidal_embedding(_distance_from_end(mask), self.cfg.d_model)
        x = self.dropout(x)
        attend = mask.bool()[:, None, None, :]
        for layer in self.encoder_layers:
            x = layer(x, attend)
        states = self.encoder_norm(x)
        m = self.season_length
        index = (mask.sum(dim=1, keepdim=True) - m + torch.arange(m).unsqueeze(0)).clamp(min=0)
        return states, values.gather(1, index), [layer.cross_attn.project_kv(states) for layer in self.decoder_layers]

    def empty_past(self, batch: int) -> list[KV]:
        shape = (batch, self.n_heads, 0, self.head_dim)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in self.decoder_layers]

    def decode(
        self,
        input_values: Tensor,
        position_ids: Tensor,
        decoder_attention_mask: Tensor,
        encoder_attention_mask: Tensor,
        last_season: Tensor,
        past: list[KV],
        cross: list[KV],
    ) -> tuple[Tensor, list[KV]]:
        """T decoder steps per row: input_values, position_ids (B, T); masks as in translation;
        last_season (B, m) from the encoder.

        Returns quantiles (B, T, Q) and the present K/V per layer (B, H, P + T, Dh).
        """
        p, t = past[0][0].shape[2], input_values.shape[1]
        query_index = torch.arange(t, device=input_values.device).unsqueeze(1) + p
        key_index = torch.arange(p + t, device=input_values.device).unsqueeze(0)
        self_mask = decoder_attention_mask.bool()[:, None, None, :] & (key_index <= query_index)
        cross_mask = encoder_attention_mask.bool()[:, None, None, :]
        x = self.decoder_in(input_values.unsqueeze(-1)) + sinusoidal_embedding(position_ids, self.cfg.d_model)
        x = self.dropout(x)
        present: list[KV] = []
        for layer, layer_past, layer_cross in zip(self.decoder_layers, past, cross):
            x, kv = layer(x, layer_past, self_mask, layer_cross, cross_mask)
            present.append(kv)
        seasonal_naive = last_season.gather(1, position_ids % self.season_length)  # (B, T)
        return seasonal_naive.unsqueeze(-1) + monotone(self.head(self.decoder_norm(x))), present

    def forward(self, context: Tensor, mask: Tensor, decoder_inputs: Tensor, free_running: bool = False) -> Tensor:
        """Quantiles (B, T, Q) for T steps. decoder_inputs (B, T) are the last context value
        followed by the true values before each step (teacher forcing, one decoder call); with
        `free_running`, only the first is used and each later step is fed the model's own
        median, step by step through the KV cache, as at inference."""
        _, last_season, cross = self.encode(context, mask)
        batch, t = decoder_inputs.shape
        if not free_running:
            positions = torch.arange(t).unsqueeze(0).expand(batch, t)
            ones = torch.ones(batch, t, dtype=torch.long)
            quantiles, _ = self.decode(decoder_inputs, positions, ones, mask, last_season, self.empty_past(batch), cross)
            return quantiles
        past, value, steps = self.empty_past(batch), decoder_inputs[:, :1], []
        for step in range(t):
            positions = torch.full((batch, 1), step, dtype=torch.long)
            ones = torch.ones(batch, step + 1, dtype=torch.long)
            q, past = self.decode(value, positions, ones, mask, last_season, past, cross)
            steps.append(q)
            value = q[:, :, self.median].detach()
        return torch.cat(steps, dim=1)


class LstmForecaster(nn.Module):
    def __init__(self, cfg: ForecastConfig) -> None:
        super().__init__()
        if cfg.architecture not in ("lstm-additive", "lstm-dot"):
            raise ValueError(f"LstmForecaster takes lstm-additive or lstm-dot, not {cfg.architecture}")
        self.cfg = cfg
        d = cfg.d_model
        self.additive = cfg.architecture == "lstm-additive"
        self.encoder_in = nn.Linear(1, d)
        self.encoder = nn.LSTM(d, d, num_layers=1, batch_first=True)
        self.init_h = nn.Linear(d, d)
        self.init_c = nn.Linear(d, d)
        self.key_proj = nn.Linear(d, d, bias=False)
        self.query_proj = nn.Linear(d, d)
        self.score = nn.Linear(d, 1, bias=False)  # additive attention only
        self.decoder_in = nn.Linear(1, d)
        self.cell = nn.LSTMCell(2 * d, d)
        self.head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, len(cfg.quantile_levels)))
        self.dropout = nn.Dropout(cfg.dropout)
        self.median = list(cfg.quantile_levels).index(0.5)

    def encode(self, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """values, mask (B, S) -> states (B, S, D), attention keys (B, S, D), initial h and c (B, D)."""
        out, _ = self.encoder(self.dropout(self.encoder_in(values.unsqueeze(-1))))
        states = out * mask.unsqueeze(-1).to(out.dtype)
        last = (mask.sum(dim=1) - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, out.shape[2])
        summary = out.gather(1, last).squeeze(1)
        return states, self.key_proj(states), torch.tanh(self.init_h(summary)), self.init_c(summary)

    def step(
        self, value: Tensor, encoder_attention_mask: Tensor, states: Tensor, keys: Tensor, h: Tensor, c: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One step: value (B, 1) -> quantiles (B, 1, Q), new h and c (B, D)."""
        query = self.query_proj(h).unsqueeze(1)  # (B, 1, D)
        if self.additive:
            scores = self.score(torch.tanh(query + keys)).squeeze(-1)
        else:
            scores = (query * keys).sum(-1) / math.sqrt(keys.shape[-1])
        scores = scores.masked_fill(encoder_attention_mask == 0, MASK_VALUE)
        context = torch.bmm(torch.softmax(scores, dim=-1).unsqueeze(1), states).squeeze(1)  # (B, D)
        x = self.dropout(self.decoder_in(value))
        h, c = self.cell(torch.cat([x, context], dim=-1), (h, c))
        out = self.head(self.dropout(torch.cat([h, context], dim=-1)))
        return monotone(out).unsqueeze(1), h, c

    def forward(self, context: Tensor, mask: Tensor, decoder_inputs: Tensor, free_running: bool = False) -> Tensor:
        """Quantiles (B, T, Q); see `TransformerForecaster.forward` for `free_running`."""
        states, keys, h, c = self.encode(context, mask)
        steps, value = [], decoder_inputs[:, :1]
        for t in range(decoder_inputs.shape[1]):
            if not free_running:
                value = decoder_inputs[:, t : t + 1]
            q, h, c = self.step(value, mask, states, keys, h, c)
            steps.append(q)
            value = q[:, 0, self.median : self.median + 1].detach()
        return torch.cat(steps, dim=1)


class ArForecaster(nn.Module):
    """y_t = b + sum_i w_i y_{t-p+i-1}, on scaled values; point forecasts only."""

    def __init__(self, cfg: ForecastConfig, order: int) -> None:
        super().__init__()
        if order < 2:
            raise ValueError(f"AR order must be at least 2, got {order}")
        self.cfg = cfg
        self.order = order
        self.linear = nn.Linear(order, 1)

    def encode(self, values: Tensor, mask: Tensor) -> Tensor:
        """values, mask (B, S), every row at least `order` long -> the p - 1 values before each row's last (B, p - 1)."""
        lengths = mask.sum(dim=1, keepdim=True)
        index = (lengths - self.order + torch.arange(self.order - 1).unsqueeze(0)).clamp(min=0)
        return values.gather(1, index)

    def step(self, value: Tensor, past: Tensor) -> tuple[Tensor, Tensor]:
        """value (B, 1), past (B, p - 1) -> mean (B, 1, 1), next past (B, p - 1)."""
        window = torch.cat([past, value], dim=1)
        return self.linear(window).unsqueeze(1), window[:, 1:]

    def forward(self, context: Tensor, mask: Tensor, decoder_inputs: Tensor) -> Tensor:
        """Means (B, T, 1) for decoder_inputs (B, T), each from its own full window of p values."""
        sequence = torch.cat([self.encode(context, mask), decoder_inputs], dim=1)  # (B, p - 1 + T)
        return self.linear(sequence.unfold(1, self.order, 1))


def fit_ar(windows: Sequence[np.ndarray], order: int) -> tuple[np.ndarray, float]:
    """Least-squares AR(p) coefficients (oldest lag first) and intercept over scaled windows."""
    rows, targets = [], []
    for w in windows:
        if len(w) <= order:
            continue
        lagged = np.lib.stride_tricks.sliding_window_view(w, order + 1)
        rows.append(lagged[:, :-1])
        targets.append(lagged[:, -1])
    x = np.concatenate(rows).astype(np.float64)
    y = np.concatenate(targets).astype(np.float64)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, y, rcond=None)
    return solution[:-1], float(solution[-1])


def build_forecaster(cfg: ForecastConfig) -> nn.Module:
    """The untrained model of `cfg`; an AR order of 0 in `cfg` must be resolved by the caller."""
    if cfg.architecture == "transformer":
        from seqcast.export.forecast.data import forecast_task

        return TransformerForecaster(cfg, forecast_task(cfg).season_length)
    if cfg.architecture in ("lstm-additive", "lstm-dot"):
        return LstmForecaster(cfg)
    return ArForecaster(cfg, cfg.ar_order)
