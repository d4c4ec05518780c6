"""Forecasting models: transformer and LSTM-with-attention encoder-decoders, AR(p), an
ensemble of direct MLPs, and an LSTM blended with the Theta method.

All of them read scaled values (see `seqcast.bundle.scaling`) and forecast one step per decoder
call, fed the previous step's point forecast (the last observed value at the first step):

* `TransformerForecaster`: a value embedding plus sinusoidal positions, the translation
  transformer's encoder and decoder layers (masked self-attention with the same past/present
  K/V contract, cross-attention), and a quantile head.
* `LstmForecaster`: an LSTM encoder; the decoder is an LSTM cell whose state is `(h, c)`, with
  additive (Bahdanau) or dot-product (Luong) attention over the encoder states, and a quantile
  head.
* `ArForecaster`: a linear autoregression of order p with intercept, fitted by least squares
  (`fit_ar`); its decoder state is the last p - 1 values.
* `MlpForecaster`: an ensemble of direct multi-horizon MLPs (with a linear skip) that each
  map the last L values to every step's quantiles at once; the encoder runs the members and
  averages their quantiles, and the decoder state is the not-yet-emitted steps.
* `ThetaBlend`: an `LstmForecaster` whose point forecast is averaged with the Theta method's
  (`theta_forecast`, computed in the encoder from the context alone, so it exports like any
  other layer); its decoder state is the LSTM's plus the Theta forecasts not yet emitted.

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
from seqcast.export.attention import KV, causal_mask, padding_mask
from seqcast.export.transformer import MASK_VALUE, DecoderLayer, EncoderLayer, TransformerConfig, sinusoidal_embedding


def monotone(raw: Tensor) -> Tensor:
    """(..., Q) free outputs -> (..., Q) non-decreasing quantiles: q_0 = raw_0, q_k = q_{k-1} + softplus(raw_k)."""
    return torch.cat([raw[..., :1], raw[..., :1] + torch.cumsum(nn.functional.softplus(raw[..., 1:]), dim=-1)], dim=-1)


def pinball_loss(quantiles: Tensor, target: Tensor, levels: Tensor) -> Tensor:
    """Mean pinball loss of quantiles (B, T, Q), or (M, B, T, Q) for M ensemble members, against
    target (B, T) at levels (Q,)."""
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
        attend = padding_mask(mask, values.shape[1])
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
        self_mask = causal_mask(decoder_attention_mask, input_values.shape[1])
        cross_mask = padding_mask(encoder_attention_mask, input_values.shape[1])
        x = self.decoder_in(input_values.unsqueeze(-1)) + sinusoidal_embedding(position_ids, self.cfg.d_model)
        x = self.dropout(x)
        present: list[KV] = []
        for layer, layer_past, layer_cross in zip(self.decoder_layers, past, cross):
            x, kv, _ = layer(x, layer_past, self_mask, layer_cross, cross_mask)
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


def last_values(values: Tensor, mask: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """values, mask (B, S) right-padded -> each row's last `count` values, right-aligned with
    zeros in front where the row is shorter (B, L), and 1 where a value exists (B, L)."""
    index = mask.sum(dim=1, keepdim=True) - count + torch.arange(count, device=values.device).unsqueeze(0)
    present = (index >= 0).to(values.dtype)
    return values.gather(1, index.clamp(min=0)) * present, present


def seasonal_indices(values: Tensor, present: Tensor, season: int) -> Tensor:
    """Classical multiplicative decomposition: each value over the centred moving average of
    one season around it (2 x m for even m, so a trend does not leak into the indices), averaged
    by position in the season (position = index % m) and normalised to mean 1. values, present
    (B, L) -> indices (B, m); 1 where no ratio is available."""
    width = season + 1 - season % 2
    weights = torch.ones(width, dtype=values.dtype, device=values.device)
    if season % 2 == 0:
        weights[0] = weights[-1] = 0.5
    trend = nn.functional.conv1d(values.unsqueeze(1), (weights / season).view(1, 1, -1)).squeeze(1)  # (B, L - width + 1)
    complete = nn.functional.conv1d(present.unsqueeze(1), torch.ones(1, 1, width, dtype=values.dtype)).squeeze(1)
    usable = ((complete > width - 0.5) & (trend > 1e-6)).to(values.dtype)
    middle = width // 2
    ratio = values[:, middle : middle + trend.shape[1]] / trend.clamp(min=1e-6) * usable
    position = nn.functional.one_hot(
        (torch.arange(trend.shape[1], device=values.device) + middle) % season, season
    ).to(values.dtype)  # (L - width + 1, m)
    counts = usable @ position  # (B, m)
    index = torch.where(counts > 0, (ratio @ position) / counts.clamp(min=1.0), torch.ones_like(counts))
    # The bounds keep near-zero seasons (series with empty quarters) from exploding on division.
    return (index / index.mean(dim=1, keepdim=True).clamp(min=1e-6)).clamp(min=0.1, max=10.0)


def last_right_padded(values: Tensor, mask: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """values, mask (B, S) right-padded -> each row's last `count` values (all of a shorter row),
    still right-padded: values and mask (B, count)."""
    lengths = mask.sum(dim=1, keepdim=True)
    kept = lengths.clamp(max=count)
    steps = torch.arange(count, device=values.device).unsqueeze(0)
    index = (lengths - kept + steps).clamp(max=values.shape[1] - 1)
    inside = (steps < kept).to(mask.dtype)
    return values.gather(1, index) * inside.to(values.dtype), inside


def theta_forecast(values: Tensor, present: Tensor, horizon: int, season: int, alphas: Tensor) -> Tensor:
    """The standard Theta method on each row's last L values: multiplicative seasonal indices
    (`seasonal_indices`), simple exponential smoothing (alpha from the grid `alphas`, least
    in-sample squared error) of the deseasonalised values, plus half the least-squares drift.

    values, present (B, L): the last L values, right-aligned, with 1 where a value exists;
    positive values expected (the mean-abs scaling without centring). Returns forecasts (B, H).
    """
    batch, length = values.shape
    count = present.sum(dim=1, keepdim=True).long()  # (B, 1)
    n = count.to(values.dtype)
    index = seasonal_indices(values, present, season)
    season_of = torch.arange(length + horizon, device=values.device) % season
    deseasonalised = values / index[:, season_of[:length]] * present  # (B, L)
    # Simple exponential smoothing for every alpha at once, from each row's first value x_s:
    # l_t = (1 - a)^(t - s + 1) x_s + sum_{j <= t} a (1 - a)^(t - j) x_j (zeros before s), one
    # matrix product instead of a loop over time (which would unroll into the exported graph).
    steps = torch.arange(length, device=values.device, dtype=values.dtype)
    lag = steps.view(-1, 1) - steps.view(1, -1)  # (L, L): t - j
    decay = (1 - alphas).view(-1, 1, 1)  # (G, 1, 1)
    weights = alphas.view(-1, 1, 1) * decay ** lag.clamp(min=0) * (lag >= 0).to(values.dtype)  # (G, L, L)
    start = (length - count).to(values.dtype)  # (B, 1)
    first = deseasonalised.gather(1, (length - count).clamp(max=length - 1))  # (B, 1)
    since = (steps.unsqueeze(0) - start + 1).clamp(min=0).unsqueeze(1)  # (B, 1, L)
    levels = torch.einsum("gtj,bj->bgt", weights, deseasonalised) + decay.view(1, -1, 1) ** since * first.unsqueeze(1)
    # One-step errors x_t - l_(t-1) for t after the first value.
    errors = (deseasonalised[:, 1:].unsqueeze(1) - levels[:, :, :-1]) * present[:, :-1].unsqueeze(1)
    sse = (errors**2).sum(dim=2)  # (B, G)
    level = levels[:, :, -1]
    best = sse.argmin(dim=1, keepdim=True)
    level, alpha = level.gather(1, best), alphas[best]  # (B, 1)
    # Least-squares slope over the values present.
    t = torch.arange(length, device=values.device, dtype=values.dtype).unsqueeze(0)
    t_mean = (t * present).sum(dim=1, keepdim=True) / n
    x_mean = deseasonalised.sum(dim=1, keepdim=True) / n
    dt = (t - t_mean) * present
    slope = (dt * (deseasonalised - x_mean)).sum(dim=1, keepdim=True) / (dt**2).sum(dim=1, keepdim=True).clamp(min=1e-6)
    h = torch.arange(1, horizon + 1, device=values.device, dtype=values.dtype).unsqueeze(0)
    trend = slope / 2 * (h - 1 + 1 / alpha - (1 - alpha) ** n / alpha)
    return (level + trend) * index[:, season_of[length:]]


class MlpMember(nn.Module):
    """One direct forecaster: the last `lookback` values (zeros, flagged, where the context is
    shorter) through a linear skip plus an MLP, to (B, H, Q) monotone quantiles."""

    def __init__(self, lookback: int, horizon: int, width: int, layers: int, levels: int, dropout: float) -> None:
        super().__init__()
        self.lookback, self.horizon, self.levels = lookback, horizon, levels
        features, out = 2 * lookback, horizon * levels
        self.skip = nn.Linear(features, out)
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(features if i == 0 else width, width), nn.ReLU(), nn.Dropout(dropout)]
        self.mlp = nn.Sequential(*blocks, nn.Linear(width, out)) if layers else None

    def forward(self, values: Tensor, mask: Tensor) -> Tensor:
        """values, mask (B, S) right-padded -> quantiles (B, H, Q)."""
        recent, present = last_values(values, mask, self.lookback)
        x = torch.cat([recent, present], dim=1)  # (B, 2L)
        raw = self.skip(x) if self.mlp is None else self.skip(x) + self.mlp(x)
        return monotone(raw.view(-1, self.horizon, self.levels))


class MlpForecaster(nn.Module):
    """Averages the quantiles of `cfg.members` direct MLPs (lookbacks cycle through
    `cfg.lookbacks`); forecasts every step in the encoder, so decoding only reads them out and
    ignores the fed values. The mean of monotone quantiles is monotone."""

    def __init__(self, cfg: ForecastConfig, horizon: int, default_lookback: int) -> None:
        super().__init__()
        if cfg.members < 1:
            raise ValueError(f"members must be at least 1, got {cfg.members}")
        self.cfg, self.horizon = cfg, horizon
        lookbacks = cfg.lookbacks or (default_lookback,)
        self.members = nn.ModuleList(
            MlpMember(lookbacks[i % len(lookbacks)], horizon, cfg.d_model, cfg.layers, len(cfg.quantile_levels), cfg.dropout)
            for i in range(cfg.members)
        )

    def member_quantiles(self, values: Tensor, mask: Tensor) -> Tensor:
        """values, mask (B, S) -> every member's quantiles (M, B, H, Q)."""
        return torch.stack([member(values, mask) for member in self.members])

    def encode(self, values: Tensor, mask: Tensor) -> Tensor:
        """values, mask (B, S) -> the ensemble's quantiles for every step (B, H, Q)."""
        return self.member_quantiles(values, mask).mean(dim=0)

    def step(self, value: Tensor, pending: Tensor) -> tuple[Tensor, Tensor]:
        """value (B, 1), unused; pending (B, H, Q) -> this step's quantiles (B, 1, Q) and the
        pending steps moved up by one (the last repeated, keeping the state's shape)."""
        return pending[:, :1], torch.cat([pending[:, 1:], pending[:, -1:]], dim=1)

    def forward(self, context: Tensor, mask: Tensor, decoder_inputs: Tensor, free_running: bool = False) -> Tensor:
        """Quantiles (B, T, Q) for T <= H steps; decoder_inputs (B, T) only set T. In training
        mode, each member's own quantiles (M, B, T, Q) instead: the pinball loss broadcasts over
        the leading axis, so every member is fitted on its own, as an ensemble's members are."""
        t = decoder_inputs.shape[1]
        if self.training:
            return self.member_quantiles(context, mask)[:, :, :t]
        return self.encode(context, mask)[:, :t]


class ThetaBlend(nn.Module):
    """An LSTM forecaster whose point forecast is blended with the Theta method's: the point is
    (1 - w) * the LSTM's median + w * Theta (the mean over `cfg.theta_lookbacks`), and every
    quantile moves with it, keeping the LSTM's spread. The encoder computes Theta's forecast of
    every step; the decoder state is the LSTM's (h, c) plus the steps not yet emitted. The
    LSTM reads the last `neural_context` values of the (longer) context, as it would alone; in
    training mode its own quantiles come out, so it trains as it would alone."""

    def __init__(self, cfg: ForecastConfig, neural: LstmForecaster, horizon: int, season: int, neural_context: int) -> None:
        super().__init__()
        if not 0 < cfg.theta_weight <= 1:
            raise ValueError(f"theta_weight must lie in (0, 1], got {cfg.theta_weight}")
        if not cfg.theta_lookbacks or min(cfg.theta_lookbacks) <= season:
            raise ValueError(f"theta_lookbacks must be longer than the season {season}, got {cfg.theta_lookbacks}")
        self.cfg, self.neural, self.horizon, self.season = cfg, neural, horizon, season
        self.neural_context = neural_context
        self.median = neural.median
        self.register_buffer("alphas", torch.linspace(0.05, 1.0, 20), persistent=False)

    def theta(self, values: Tensor, mask: Tensor) -> Tensor:
        """values, mask (B, S) -> the Theta forecasts' mean over the lookbacks (B, H)."""
        forecasts = [
            theta_forecast(*last_values(values, mask, lookback), self.horizon, self.season, self.alphas)
            for lookback in self.cfg.theta_lookbacks
        ]
        return torch.stack(forecasts).mean(dim=0)

    def blend(self, quantiles: Tensor, theta: Tensor) -> Tensor:
        """quantiles (B, T, Q), theta (B, T) -> quantiles shifted to the blended point (B, T, Q)."""
        shift = self.cfg.theta_weight * (theta - quantiles[..., self.median])
        return quantiles + shift.unsqueeze(-1)

    def encode(self, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """values, mask (B, S) -> the mask the LSTM's attention uses (B, N), its encoder outputs
        (see `LstmForecaster.encode`, over N = min(S, neural_context) values) and Theta's
        forecasts (B, H)."""
        recent, recent_mask = last_right_padded(values, mask, self.neural_context)
        return (recent_mask, *self.neural.encode(recent, recent_mask), self.theta(values, mask))

    def step(
        self, value: Tensor, encoder_attention_mask: Tensor, states: Tensor, keys: Tensor, h: Tensor, c: Tensor,
        pending: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One step: the LSTM's (see `LstmForecaster.step`), blended with pending (B, H)'s first
        step; the pending Theta forecasts move up by one (the last repeated)."""
        quantiles, h, c = self.neural.step(value, encoder_attention_mask, states, keys, h, c)
        return self.blend(quantiles, pending[:, :1]), h, c, torch.cat([pending[:, 1:], pending[:, -1:]], dim=1)

    def forward(self, context: Tensor, mask: Tensor, decoder_inputs: Tensor, free_running: bool = False) -> Tensor:
        """Quantiles (B, T, Q) for T <= H steps, as `LstmForecaster.forward`; blended in eval mode."""
        quantiles = self.neural(*last_right_padded(context, mask, self.neural_context), decoder_inputs, free_running)
        if self.training:
            return quantiles
        return self.blend(quantiles, self.theta(context, mask)[:, : decoder_inputs.shape[1]])


def build_forecaster(cfg: ForecastConfig) -> nn.Module:
    """The untrained model of `cfg`; an AR order of 0 in `cfg` must be resolved by the caller."""
    if cfg.architecture == "ar":
        return ArForecaster(cfg, cfg.ar_order)
    from seqcast.export.forecast.data import forecast_task

    task = forecast_task(cfg)
    if cfg.architecture == "transformer":
        return TransformerForecaster(cfg, task.season_length)
    if cfg.architecture in ("lstm-additive", "lstm-dot"):
        if cfg.theta_weight:
            if task.scaler.center:
                raise ValueError(f"the Theta blend needs positive scaled values; {task.name} is scaled with centring")
            return ThetaBlend(cfg, LstmForecaster(cfg), task.horizon, task.season_length, task.context_length)
        return LstmForecaster(cfg)
    return MlpForecaster(cfg, task.horizon, task.context_length)
