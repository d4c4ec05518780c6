"""The decoding loop: encode once, then one decoder step for the whole batch until all rows end.

The loop knows nothing of transformers, RNNs, tokens or values. The manifest says which
decoder inputs are state (fed back from an output each step: the KV cache, or `h` and `c`),
which are static (encoder outputs, the source mask) and whether the decoder takes positions and a mask over the cache.
Rows that finish leave the batch at once, so later steps run on fewer rows. What a step chooses
is a small `Select` function: the argmax token for translation (fed back as the next input id),
or every forecast column for forecasting (the point forecast fed back as the next value). The
same loop serves both.

Any object with the graph specs, `encode(source, mask)` and `step(feeds)` can drive it: the
server's `OnnxModel`, PyTorch behind the same interface at export, or a scripted runtime in unit
tests.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from seqcast.server.manifest import DecoderSpec, EncoderSpec, SpecialTokens


class Runtime(Protocol):
    encoder_spec: EncoderSpec
    decoder_spec: DecoderSpec

    def encode(self, source: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]: ...

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Finish(enum.Enum):
    EOS = "eos"
    LENGTH = "length"
    STOPPED = "stopped"  # the caller asked to stop (deadline passed, cancelled)


# Called for every decoded step of a row: (row, item, finish). The item is what the row produced
# (a token id, or a forecast step's columns); a row that ends on end-of-sequence gets None with
# Finish.EOS, because the end-of-sequence token itself is not output.
Emit = Callable[[int, Any, Finish | None], None]


@dataclass(frozen=True)
class Selection:
    """What one step chose for each of its B rows."""

    feed: np.ndarray  # (B,) the input of each row's next step
    ended: np.ndarray  # (B,) bool: the row is complete (end-of-sequence)
    items: Sequence[Any]  # (B,) what each row emits


# Chooses from one step's output (B, K): logits, or forecast columns.
Select = Callable[[np.ndarray], Selection]


def argmax_select(eos: int) -> Select:
    """Greedy token choice: the most likely token; a row ends on `eos`."""

    def select(logits: np.ndarray) -> Selection:
        tokens = logits.argmax(axis=-1).astype(np.int64)
        return Selection(tokens, tokens == eos, tokens.tolist())

    return select


def point_select(column: int) -> Select:
    """Forecast choice: every column is output; column `column` (the point forecast) is fed back."""

    def select(columns: np.ndarray) -> Selection:
        return Selection(columns[:, column].astype(np.float32), np.zeros(len(columns), dtype=bool), list(columns))

    return select


@dataclass
class DecodeBatch:
    """Decoder state of the rows decoded together; index i of every tensor belongs to rows[i]."""

    rows: list[int]
    # Decoder inputs fixed for each row (encoder outputs, source mask), by input name.
    static: dict[str, np.ndarray]
    # Decoder inputs fed back from outputs each step (KV cache or RNN state), by input name.
    state: dict[str, np.ndarray]
    # (B, P): 1 where the self-attention cache holds a real step of the row.
    past_mask: np.ndarray
    # (B,) the next step's position, and the value fed at the next step (token id or value).
    positions: np.ndarray
    feed: np.ndarray
    # (B,) steps generated so far, and each row's limit.
    generated: np.ndarray
    limits: np.ndarray


@dataclass
class StepTimings:
    encoder_s: float = 0.0
    step_s: list[float] = field(default_factory=list)
    rows_per_step: list[int] = field(default_factory=list)


def pad_batch(sequences: Sequence[Sequence[int] | np.ndarray], pad: float, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads sequences to (B, S) of `dtype` and a (B, S) int64 mask (1 = real element)."""
    longest = max(len(s) for s in sequences)
    values = np.full((len(sequences), longest), pad, dtype=dtype)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for i, seq in enumerate(sequences):
        values[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return values, mask


def _initial_state(decoder: DecoderSpec, batch: int, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    shapes = {t.name: t.shape for t in decoder.inputs}
    state = {}
    for spec in decoder.state:
        if spec.init == "encoder":
            state[spec.input] = encoded[spec.source]
            continue
        dims = []
        for axis, dim in enumerate(shapes[spec.input]):
            dims.append(batch if axis == 0 else 0 if axis == spec.seq_axis else dim)
        state[spec.input] = np.zeros(dims, dtype=np.float32)
    return state


def start_batch(
    runtime: Runtime,
    sources: Sequence[Sequence[int] | np.ndarray],
    pad: float,
    first_feed: np.ndarray,
    limits: Sequence[int],
    timings: StepTimings,
) -> DecodeBatch:
    """Encodes the sources (token ids with end-of-sequence, or scaled values) as one batch.

    `first_feed` (B,) is each row's first decoder input: the begin-of-sequence token, or the
    last observed value.
    """
    dtype = np.float32 if first_feed.dtype == np.float32 else np.int64
    source, mask = pad_batch(sources, pad, dtype)
    t0 = time.perf_counter()
    encoded = runtime.encode(source, mask)
    timings.encoder_s += time.perf_counter() - t0
    encoded[runtime.encoder_spec.attention_mask] = mask
    batch = len(sources)
    return DecodeBatch(
        rows=list(range(batch)),
        static={s.input: encoded[s.source] for s in runtime.decoder_spec.static},
        state=_initial_state(runtime.decoder_spec, batch, encoded),
        past_mask=np.zeros((batch, 0), dtype=np.int64),
        positions=np.zeros(batch, dtype=np.int64),
        feed=first_feed.astype(dtype),
        generated=np.zeros(batch, dtype=np.int64),
        limits=np.asarray(limits, dtype=np.int64),
    )


def step_output(runtime: Runtime, batch: DecodeBatch, timings: StepTimings) -> np.ndarray:
    """Runs one decoder step on every row; returns its last-position output (B, K) and advances the state."""
    spec = runtime.decoder_spec
    mask = np.concatenate([batch.past_mask, np.ones((len(batch.rows), 1), dtype=np.int64)], axis=1)
    feeds = {spec.feed: batch.feed[:, None], **batch.static, **batch.state}
    if spec.position_ids:
        feeds[spec.position_ids] = batch.positions[:, None]
    if spec.attention_mask:
        feeds[spec.attention_mask] = mask
    t0 = time.perf_counter()
    out = runtime.step(feeds)
    timings.step_s.append(time.perf_counter() - t0)
    timings.rows_per_step.append(len(batch.rows))
    batch.state = {s.input: out[s.output] for s in spec.state}
    batch.past_mask = mask
    batch.positions = batch.positions + 1
    return out[spec.output][:, -1, :]


def keep_rows(batch: DecodeBatch, keep: np.ndarray) -> None:
    """Drops the rows where keep (B,) is False from every tensor of the batch."""
    if keep.all():
        return
    index = np.flatnonzero(keep)
    batch.rows = [batch.rows[i] for i in index]
    batch.static = {k: v[index] for k, v in batch.static.items()}
    batch.state = {k: v[index] for k, v in batch.state.items()}
    for name in ("past_mask", "positions", "feed", "generated", "limits"):
        setattr(batch, name, getattr(batch, name)[index])


def decode(
    runtime: Runtime,
    batch: DecodeBatch,
    select: Select,
    emit: Emit,
    should_stop: Callable[[], bool],
    timings: StepTimings,
) -> None:
    """Steps the batch until every row ended; each row's choices go to `emit` as they are made.

    A row ends when `select` says so (end-of-sequence) or at its limit. `should_stop` is
    checked before every step; when it says so, every remaining row ends with Finish.STOPPED.
    """
    while batch.rows:
        if should_stop():
            for row in batch.rows:
                emit(row, None, Finish.STOPPED)
            break
        chosen = select(step_output(runtime, batch, timings))
        batch.generated += 1
        full = ~chosen.ended & (batch.generated >= batch.limits)
        for i, row in enumerate(batch.rows):
            if chosen.ended[i]:
                emit(row, None, Finish.EOS)
            else:
                emit(row, chosen.items[i], Finish.LENGTH if full[i] else None)
        batch.feed = chosen.feed
        keep_rows(batch, ~(chosen.ended | full))


def greedy_decode(
    runtime: Runtime,
    special: SpecialTokens,
    sources: Sequence[Sequence[int]],
    limits: Sequence[int],
    emit: Emit,
    should_stop: Callable[[], bool] = lambda: False,
) -> StepTimings:
    """Greedy decoding of token sources; `limits[i]` is the most new tokens for source i."""
    timings = StepTimings()
    first = np.full(len(sources), special.bos, dtype=np.int64)
    batch = start_batch(runtime, sources, special.pad, first, limits, timings)
    decode(runtime, batch, argmax_select(special.eos), emit, should_stop, timings)
    return timings


def forecast_decode(
    runtime: Runtime,
    contexts: Sequence[np.ndarray],
    horizons: Sequence[int],
    point_column: int,
    emit: Emit,
    should_stop: Callable[[], bool] = lambda: False,
) -> StepTimings:
    """Forecasts every scaled context `horizons[i]` steps; each step's columns go to `emit`.

    The first decoder input of a row is its last context value; after that, its point forecast.
    """
    timings = StepTimings()
    first = np.array([c[-1] for c in contexts], dtype=np.float32)
    batch = start_batch(runtime, contexts, 0.0, first, horizons, timings)
    decode(runtime, batch, point_select(point_column), emit, should_stop, timings)
    return timings


def greedy_tokens(
    runtime: Runtime,
    special: SpecialTokens,
    sources: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Greedy output token ids of every source, end-of-sequence excluded.

    With `batch_size`, sources are decoded in batches of similar length (less padding); the
    result is in the order of `sources` either way.
    """
    outputs: list[list[int]] = [[] for _ in sources]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    size = batch_size or max(len(sources), 1)
    for start in range(0, len(order), size):
        index = order[start : start + size]

        def emit(row: int, token: int | None, finish: Finish | None, index: list[int] = index) -> None:
            if token is not None:
                outputs[index[row]].append(token)

        greedy_decode(runtime, special, [sources[i] for i in index], [max_new_tokens] * len(index), emit)
    return outputs


def forecast_values(
    runtime: Runtime, contexts: Sequence[np.ndarray], horizon: int, point_column: int
) -> np.ndarray:
    """Every step's columns for every scaled context: (N, horizon, K), in the order of `contexts`."""
    out: list[list[np.ndarray]] = [[] for _ in contexts]

    def emit(row: int, columns: np.ndarray | None, finish: Finish | None) -> None:
        if columns is not None:
            out[row].append(columns)

    forecast_decode(runtime, contexts, [horizon] * len(contexts), point_column, emit)
    return np.stack([np.stack(steps) for steps in out])
