"""The decoding loop: encode once, then one decoder step for the whole batch until all rows end.

The loop knows nothing of transformers or RNNs. The manifest says which decoder inputs are
state (fed back from an output each step: the KV cache, or `h`), which are static (encoder
outputs, the source mask) and whether the decoder takes positions and a mask over the cache.
Rows that finish leave the batch at once, so later steps run on fewer rows.

Any object with the graph specs, special tokens, `encode(ids, mask)` and `step(feeds)` can drive it: the server's
`OnnxModel`, or a scripted runtime in unit tests.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from seqcast.server.manifest import DecoderSpec, EncoderSpec, SpecialTokens


class Runtime(Protocol):
    encoder_spec: EncoderSpec
    decoder_spec: DecoderSpec
    special_tokens: SpecialTokens

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]: ...

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Finish(enum.Enum):
    EOS = "eos"
    LENGTH = "length"
    STOPPED = "stopped"  # the caller asked to stop (deadline passed, cancelled)


# Called for every decoded token: (row, token id, finish). The end-of-sequence token is not
# reported as a token: its row gets token None with Finish.EOS.
Emit = Callable[[int, int | None, Finish | None], None]


@dataclass
class DecodeBatch:
    """Decoder state of the rows decoded together; index i of every tensor belongs to rows[i]."""

    rows: list[int]
    # Decoder inputs fixed for each row (encoder outputs, source mask), by input name.
    static: dict[str, np.ndarray]
    # Decoder inputs fed back from outputs each step (KV cache or RNN state), by input name.
    state: dict[str, np.ndarray]
    # (B, P): 1 where the self-attention cache holds a real token of the row.
    past_mask: np.ndarray
    # (B,) the next token's position, and the token fed at the next step.
    positions: np.ndarray
    tokens: np.ndarray
    # (B,) tokens generated so far, and each row's limit.
    generated: np.ndarray
    limits: np.ndarray


@dataclass
class StepTimings:
    encoder_s: float = 0.0
    step_s: list[float] = field(default_factory=list)
    rows_per_step: list[int] = field(default_factory=list)


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token id lists to (B, S) int64 ids and a (B, S) int64 mask (1 = token)."""
    longest = max(len(s) for s in sequences)
    ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask


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
    runtime: Runtime, sources: Sequence[Sequence[int]], limits: Sequence[int], timings: StepTimings
) -> DecodeBatch:
    """Encodes the sources (lists of token ids, end-of-sequence included) as one batch."""
    ids, mask = pad_batch(sources, runtime.special_tokens.pad)
    t0 = time.perf_counter()
    encoded = runtime.encode(ids, mask)
    timings.encoder_s += time.perf_counter() - t0
    encoded[runtime.encoder_spec.attention_mask] = mask
    batch = len(sources)
    return DecodeBatch(
        rows=list(range(batch)),
        static={s.input: encoded[s.source] for s in runtime.decoder_spec.static},
        state=_initial_state(runtime.decoder_spec, batch, encoded),
        past_mask=np.zeros((batch, 0), dtype=np.int64),
        positions=np.zeros(batch, dtype=np.int64),
        tokens=np.full(batch, runtime.special_tokens.bos, dtype=np.int64),
        generated=np.zeros(batch, dtype=np.int64),
        limits=np.asarray(limits, dtype=np.int64),
    )


def step_logits(runtime: Runtime, batch: DecodeBatch, timings: StepTimings) -> np.ndarray:
    """Runs one decoder step on every row; returns next-token logits (B, V) and advances the state."""
    spec = runtime.decoder_spec
    mask = np.concatenate([batch.past_mask, np.ones((len(batch.rows), 1), dtype=np.int64)], axis=1)
    feeds = {spec.input_ids: batch.tokens[:, None], **batch.static, **batch.state}
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
    return out[spec.logits][:, -1, :]


def keep_rows(batch: DecodeBatch, keep: np.ndarray) -> None:
    """Drops the rows where keep (B,) is False from every tensor of the batch."""
    if keep.all():
        return
    index = np.flatnonzero(keep)
    batch.rows = [batch.rows[i] for i in index]
    batch.static = {k: v[index] for k, v in batch.static.items()}
    batch.state = {k: v[index] for k, v in batch.state.items()}
    for name in ("past_mask", "positions", "tokens", "generated", "limits"):
        setattr(batch, name, getattr(batch, name)[index])


def greedy_decode(
    runtime: Runtime,
    sources: Sequence[Sequence[int]],
    limits: Sequence[int],
    emit: Emit,
    should_stop: Callable[[], bool] = lambda: False,
) -> StepTimings:
    """Greedy decoding of every source; tokens go to `emit` as they are chosen.

    `limits[i]` is the most new tokens for source i. `should_stop` is checked before every
    step; when it says so, every remaining row ends with Finish.STOPPED.
    """
    eos = runtime.special_tokens.eos
    timings = StepTimings()
    batch = start_batch(runtime, sources, limits, timings)
    while batch.rows:
        if should_stop():
            for row in batch.rows:
                emit(row, None, Finish.STOPPED)
            break
        # Select: the most likely token per row.
        chosen = step_logits(runtime, batch, timings).argmax(axis=-1)
        batch.generated += 1
        # Check stop: end-of-sequence, or the row's token limit.
        ended = chosen == eos
        full = ~ended & (batch.generated >= batch.limits)
        # Emit, then keep only the rows that go on.
        for i, row in enumerate(batch.rows):
            if ended[i]:
                emit(row, None, Finish.EOS)
            else:
                emit(row, int(chosen[i]), Finish.LENGTH if full[i] else None)
        batch.tokens = chosen.astype(np.int64)
        keep_rows(batch, ~(ended | full))
    return timings


def greedy_tokens(
    runtime: Runtime, sources: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int | None = None
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

        greedy_decode(runtime, [sources[i] for i in index], [max_new_tokens] * len(index), emit)
    return outputs
