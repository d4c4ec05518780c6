"""The decoding loop: encode once, then one decoder step for the whole batch until all rows end.

Builds on a runtime (`seqcast.bundle.runtime.OnnxModel`: ONNX Runtime sessions) and on the
strategies (`seqcast.bundle.strategies`); the scheduler (`seqcast.server.scheduler`) drives it.

The loop knows nothing of transformers, RNNs, tokens or values. The manifest says which
decoder inputs are state (fed back from an output each step: the KV cache, or `h` and `c`),
which are static (encoder outputs, the source mask) and whether the decoder takes positions and
a mask over the cache. What a step chooses is up to each sequence's strategy
(`seqcast.bundle.strategies`: greedy, sampling, beam search, forecasting), which sees only its
own rows. Sequences join between steps and leave as soon as they finish (`Decoder`), so rows at
different positions share one step: that is in-flight batching, and the scheduler drives it.
When rows leave and every sequence is one row in host memory, the rows from the end of the batch
move into their places (`fill_holes`), so a departure copies a row, not the batch.

A decoder with an alignments output (`DecoderSpec.alignments`) returns it at every step; the
loop reads it only in steps where a sequence that reports alignments is running, and hands each
such sequence its own rows. Other sequences never see it, and on a device it stays there.

Any object with the graph specs, `encode(source, mask)` and `step(feeds)` can drive it: the
server's `OnnxModel`, PyTorch behind the same interface at export, or a scripted runtime in unit
tests. A runtime that keeps decoder state on its device between steps (`OnnxModel` on CUDA)
also has `place(array)`, and its `step` returns state outputs as device tensors (OrtValues): a
step whose rows stay the same feeds them straight back, and state visits the host only when
rows join or leave.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from seqcast.bundle.manifest import DecoderSpec, EncoderSpec, SpecialTokens
from seqcast.bundle.strategies import Finish, ForecastSequence, GreedySequence
from seqcast.bundle.strategies import Sequence as DecodingSequence

__all__ = ["DecodeBatch", "Decoder", "Finish", "Runtime", "StepTimings", "forecast_decode", "forecast_values",
           "greedy_decode", "greedy_tokens", "pad_batch"]


class Runtime(Protocol):
    encoder_spec: EncoderSpec
    decoder_spec: DecoderSpec

    def encode(self, source: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]: ...

    def step(self, feeds: dict[str, Any]) -> dict[str, Any]: ...


def host(x: Any) -> np.ndarray:
    """A state tensor as a numpy array: itself, or a device tensor (OrtValue) copied to the host."""
    return x if isinstance(x, np.ndarray) else x.numpy()


_ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(int64)": 8, "tensor(int32)": 4}


def _layout(x: Any) -> tuple[tuple[int, ...], int]:
    """Shape and item size of a state tensor, on the host or on a device."""
    if isinstance(x, np.ndarray):
        return x.shape, x.itemsize
    return tuple(x.shape()), _ITEMSIZE[x.data_type()]


def nbytes(x: Any) -> int:
    """Bytes a state tensor holds, on the host or on a device."""
    shape, itemsize = _layout(x)
    return int(np.prod(shape)) * itemsize


def _slot_nbytes(x: Any, axis: int) -> int:
    """Bytes of one slot along `axis` of a state tensor (one cached step of every row)."""
    shape, itemsize = _layout(x)
    return int(np.prod([d for i, d in enumerate(shape) if i != axis])) * itemsize


@dataclass
class DecodeBatch:
    """Decoder state of the rows decoded together; index i of every tensor is row i."""

    # Decoder inputs fixed for each row (encoder outputs, source mask), by input name.
    static: dict[str, Any]
    # Decoder inputs fed back from outputs each step (KV cache or RNN state), by input name.
    # Both hold numpy arrays, or device tensors where the runtime keeps state on its device.
    state: dict[str, Any]
    # (B, P): 1 where the self-attention cache holds a real step of the row.
    past_mask: np.ndarray
    # (B,) the next step's position, and the value fed at the next step (token id or value).
    positions: np.ndarray
    feed: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)


@dataclass
class StepTimings:
    """Encoder and decoder-step counts and times; with `history`, every step's time and rows too
    (off for a long-running server, where the lists would grow without bound)."""

    history: bool = True
    encoder_s: float = 0.0
    encoder_calls: int = 0
    steps: int = 0
    last_step_s: float = 0.0
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
    timings.encoder_calls += 1
    encoded[runtime.encoder_spec.attention_mask] = mask
    batch = len(sources)
    return DecodeBatch(
        static={s.input: encoded[s.source] for s in runtime.decoder_spec.static},
        state=_initial_state(runtime.decoder_spec, batch, encoded),
        past_mask=np.zeros((batch, 0), dtype=np.int64),
        positions=np.zeros(batch, dtype=np.int64),
        feed=first_feed.astype(dtype),
    )


def step_outputs(runtime: Runtime, batch: DecodeBatch, timings: StepTimings) -> dict[str, Any]:
    """Runs one decoder step on every row and advances the state; returns every decoder output by
    name (the chosen output and alignments are (B, 1, ...): one new token per row)."""
    spec = runtime.decoder_spec
    mask = np.concatenate([batch.past_mask, np.ones((len(batch), 1), dtype=np.int64)], axis=1)
    feeds = {spec.feed: batch.feed[:, None], **batch.static, **batch.state}
    if spec.position_ids:
        feeds[spec.position_ids] = batch.positions[:, None]
    if spec.attention_mask:
        feeds[spec.attention_mask] = mask
    t0 = time.perf_counter()
    out = runtime.step(feeds)
    timings.steps += 1
    timings.last_step_s = time.perf_counter() - t0
    if timings.history:
        timings.step_s.append(timings.last_step_s)
        timings.rows_per_step.append(len(batch))
    batch.state = {s.input: out[s.output] for s in spec.state}
    batch.past_mask = mask
    batch.positions = batch.positions + 1
    return out


def take(batch: DecodeBatch, index: np.ndarray) -> DecodeBatch:
    """The rows `index` of the batch, in that order; a row may appear more than once (beams)."""
    return DecodeBatch(
        static={k: host(v)[index] for k, v in batch.static.items()},
        state={k: host(v)[index] for k, v in batch.state.items()},
        past_mask=batch.past_mask[index],
        positions=batch.positions[index],
        feed=batch.feed[index],
    )


def fill_holes(batch: DecodeBatch, keep: list[int]) -> tuple[DecodeBatch, list[int]]:
    """The rows `keep` (ascending) as the first len(keep) rows of the batch, in place: each row
    that leaves from among them is overwritten by a kept row from the end. A departure copies one
    row instead of the whole batch. Returns the batch (views of the leading rows) and, for each of
    its rows, the row it was.
    """
    n = len(keep)
    kept = set(keep)
    holes = [r for r in range(n) if r not in kept]
    movers = [r for r in keep if r >= n]
    order = list(range(n))
    for hole, mover in zip(holes, movers):
        order[hole] = mover
    dst, src = np.asarray(holes, dtype=np.int64), np.asarray(movers, dtype=np.int64)

    def fill(x: np.ndarray) -> np.ndarray:
        if len(dst):
            x[dst] = x[src]
        return x[:n]

    return DecodeBatch(
        static={k: fill(v) for k, v in batch.static.items()},
        state={k: fill(v) for k, v in batch.state.items()},
        past_mask=fill(batch.past_mask),
        positions=fill(batch.positions),
        feed=fill(batch.feed),
    ), order


def _pad_axis(x: np.ndarray, axis: int, size: int, left: bool) -> np.ndarray:
    """`x` zero-padded along `axis` to `size`, on the left or the right (np.pad is several times slower)."""
    missing = size - x.shape[axis]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[axis] = size
    out = np.zeros(shape, dtype=x.dtype)
    where = [slice(None)] * x.ndim
    where[axis] = slice(missing, None) if left else slice(0, x.shape[axis])
    out[tuple(where)] = x
    return out


def merge(a: DecodeBatch, b: DecodeBatch, spec: DecoderSpec) -> DecodeBatch:
    """The rows of `a` then the rows of `b`, as one batch.

    Source-length inputs are right-padded to the longer source (their mask marks the padding).
    Caches are left-padded to the longer past, so every row's latest step sits in the same last
    slot and the next step appends after it; `past_mask` marks the padding slots.
    """
    static = {}
    for s in spec.static:
        x, y = host(a.static[s.input]), host(b.static[s.input])
        if s.seq_axis is not None:
            size = max(x.shape[s.seq_axis], y.shape[s.seq_axis])
            x, y = _pad_axis(x, s.seq_axis, size, left=False), _pad_axis(y, s.seq_axis, size, left=False)
        static[s.input] = np.concatenate([x, y])
    past = max(a.past_mask.shape[1], b.past_mask.shape[1])
    state = {}
    for s in spec.state:
        x, y = host(a.state[s.input]), host(b.state[s.input])
        if s.seq_axis is not None:
            x, y = _pad_axis(x, s.seq_axis, past, left=True), _pad_axis(y, s.seq_axis, past, left=True)
        state[s.input] = np.concatenate([x, y])
    return DecodeBatch(
        static=static,
        state=state,
        past_mask=np.concatenate([_pad_axis(a.past_mask, 1, past, True), _pad_axis(b.past_mask, 1, past, True)]),
        positions=np.concatenate([a.positions, b.positions]),
        feed=np.concatenate([a.feed, b.feed]),
    )


def trim(batch: DecodeBatch, spec: DecoderSpec) -> bool:
    """Drops the leading cache slots that no row uses any more (left by rows that have left the
    batch) once they are a quarter of the cache: dropping them copies the whole cache, while
    carrying a few masked slots costs little. Says whether it dropped any."""
    used = batch.past_mask.any(axis=0)
    if not used.size or used[0]:
        return False
    cut = int(used.argmax()) if used.any() else used.size
    if cut < max(1, used.size // 4):
        return False
    batch.past_mask = batch.past_mask[:, cut:]
    for s in spec.state:
        if s.seq_axis is not None:
            batch.state[s.input] = np.take(host(batch.state[s.input]), np.arange(cut, used.size), axis=s.seq_axis)
    return True


class Decoder:
    """The decoding loop's body: sequences join the running batch, every step advances all of them.

    Sequences (see `seqcast.bundle.strategies`) may join between any two steps: their sources are
    encoded as one batch and merged into the running one. After each step every sequence says
    which of its rows go on; finished ones leave at once and unused cache slots are dropped.
    """

    def __init__(self, runtime: Runtime, timings: StepTimings | None = None) -> None:
        self.runtime = runtime
        self.timings = timings or StepTimings()
        self.batch: DecodeBatch | None = None
        self.active: list[DecodingSequence] = []
        # Bytes of the batch's state that don't grow with the cache, and bytes per cache slot;
        # recomputed when rows join or leave (`_measure`), so `state_bytes` costs nothing per step.
        self._fixed_bytes = 0
        self._slot_bytes = 0

    @property
    def rows(self) -> int:
        return 0 if self.batch is None else len(self.batch)

    @property
    def state_bytes(self) -> int:
        """Bytes the batch holds in decoder inputs (caches or RNN state, encoder outputs)."""
        if self.batch is None:
            return 0
        return self._fixed_bytes + self._slot_bytes * self.batch.past_mask.shape[1]

    def _measure(self) -> None:
        assert self.batch is not None
        growing = {s.input: s.seq_axis for s in self.runtime.decoder_spec.state if s.seq_axis is not None}
        fixed, slot = sum(nbytes(v) for v in self.batch.static.values()), 0
        for name, value in self.batch.state.items():
            if name in growing:
                slot += _slot_nbytes(value, growing[name])
            else:
                fixed += nbytes(value)
        self._fixed_bytes, self._slot_bytes = fixed, slot

    def join(
        self, sequences: Sequence[DecodingSequence], sources: Sequence[Sequence[int] | np.ndarray], pad: float, first_feed: np.ndarray
    ) -> None:
        """Encodes the sources of `sequences` (one each) and adds their rows to the batch.

        All or nothing: if encoding or merging raises, the running batch is left as it was.
        """
        new = start_batch(self.runtime, sources, pad, first_feed, self.timings)
        widths = [s.width for s in sequences]
        if any(w != 1 for w in widths):
            new = take(new, np.repeat(np.arange(len(sequences)), widths))
        merged = new if self.batch is None else merge(self.batch, new, self.runtime.decoder_spec)
        self._place(merged)
        self.batch = merged
        self._measure()
        self.active.extend(sequences)

    def step(self) -> None:
        """One decoder step for every row; each sequence chooses, emits and keeps or drops its rows."""
        assert self.batch is not None
        outputs = step_outputs(self.runtime, self.batch, self.timings)
        out = outputs[self.runtime.decoder_spec.output][:, -1, :]
        alignments = self._alignments(outputs)
        # Every row's most likely item in one call (greedy sequences read theirs from it): the
        # per-row work left in Python is a few list operations.
        best = out.argmax(axis=1)
        index: list[int] = []
        feeds: list[int | float] = []
        offset = 0
        for seq in self.active:
            width = seq.width
            rows = alignments[offset : offset + width] if alignments is not None and seq.alignment_width is not None else None
            parents, feed = seq.advance(out[offset : offset + width], best[offset : offset + width], rows)
            if parents:
                index.extend([offset + p for p in parents])
                feeds.extend(feed)
            offset += width
        self.active = [s for s in self.active if not s.finished]
        self._keep(index, feeds)

    def _alignments(self, outputs: dict[str, Any]) -> np.ndarray | None:
        """The step's alignments (B, S) on the host, if a running sequence reports them; else None
        (and a device copy stays where it is)."""
        name = self.runtime.decoder_spec.alignments
        if name is None or not any(s.alignment_width is not None for s in self.active):
            return None
        return host(outputs[name])[:, -1, :]

    def stop(self, sequences: Sequence[DecodingSequence]) -> None:
        """Ends `sequences` now (Finish.STOPPED) and frees their rows."""
        ending = {id(s) for s in sequences}
        index, offset = [], 0
        for seq in self.active:
            if id(seq) not in ending:
                index.extend(range(offset, offset + seq.width))
            offset += seq.width
        for seq in sequences:
            if not seq.finished:
                seq.stop()
        self.active = [s for s in self.active if id(s) not in ending]
        if self.batch is not None:
            self._keep(index, None)

    def _keep(self, index: list[int], feeds: list[int | float] | None) -> None:
        """Keeps rows `index` (in that order) with their next inputs `feeds` (None: unchanged)."""
        assert self.batch is not None
        if not index:
            self.batch = None
            return
        dtype = self.batch.feed.dtype
        # Every row goes on in place (the common step): keep the arrays, no copy.
        unchanged = len(index) == len(self.batch) and index == list(range(len(index)))
        if unchanged:
            kept = self.batch
        elif self._movable():
            # Rows only left (no beam reordered its rows): fill their places from the end.
            kept, order = fill_holes(self.batch, index)
            position = {row: i for i, row in enumerate(index)}
            self.active = [self.active[position[row]] for row in order]
            if feeds is not None:
                feeds = [feeds[position[row]] for row in order]
        else:
            kept = take(self.batch, np.asarray(index, dtype=np.int64))
        if feeds is not None:
            kept.feed = np.array(feeds, dtype=dtype)
        self.batch = kept
        if unchanged:
            return
        # Only a departure can leave leading cache slots unused; take and trim leave host arrays.
        trim(kept, self.runtime.decoder_spec)
        self._place(kept)
        self._measure()

    def _movable(self) -> bool:
        """Whether rows can move between places: state in host memory, every sequence one row."""
        assert self.batch is not None
        on_host = all(isinstance(v, np.ndarray) for v in [*self.batch.state.values(), *self.batch.static.values()])
        return on_host and all(s.width == 1 for s in self.active)

    def _place(self, batch: DecodeBatch) -> None:
        """Moves host tensors of the batch to the runtime's device, where it keeps state."""
        place = getattr(self.runtime, "place", None)
        if place is not None:
            batch.static = {k: place(v) for k, v in batch.static.items()}
            batch.state = {k: place(v) for k, v in batch.state.items()}


def _run(decoder: Decoder) -> None:
    """Steps until every sequence ended."""
    while decoder.active:
        decoder.step()


# Called for every decoded step of a row: (row, item, finish); see `strategies.Emit`.
RowEmit = Callable[[int, Any, Finish | None], None]


def _bind(sequences: Sequence[DecodingSequence], emit: RowEmit) -> None:
    for i, seq in enumerate(sequences):
        seq.emit = partial(emit, i)


def greedy_decode(
    runtime: Runtime,
    special: SpecialTokens,
    sources: Sequence[Sequence[int]],
    limits: Sequence[int],
    emit: RowEmit,
    min_new_tokens: int = 0,
) -> StepTimings:
    """Greedy decoding of token sources, all starting together; `limits[i]` is the most new tokens
    for source i, and end-of-sequence can't be chosen before `min_new_tokens`."""
    decoder = Decoder(runtime)
    sequences = [GreedySequence(special.eos, limit, min_new_tokens) for limit in limits]
    _bind(sequences, emit)
    decoder.join(sequences, sources, special.pad, np.full(len(sources), special.bos, dtype=np.int64))
    _run(decoder)
    return decoder.timings


def forecast_decode(
    runtime: Runtime,
    contexts: Sequence[np.ndarray],
    horizons: Sequence[int],
    point_column: int,
    emit: RowEmit,
) -> StepTimings:
    """Forecasts every scaled context `horizons[i]` steps; each step's columns go to `emit`.

    The first decoder input of a row is its last context value; after that, its point forecast.
    """
    decoder = Decoder(runtime)
    sequences = [ForecastSequence(h, point_column) for h in horizons]
    _bind(sequences, emit)
    decoder.join(sequences, contexts, 0.0, np.array([c[-1] for c in contexts], dtype=np.float32))
    _run(decoder)
    return decoder.timings


def greedy_tokens(
    runtime: Runtime,
    special: SpecialTokens,
    sources: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int | None = None,
    min_new_tokens: int = 0,
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

        greedy_decode(runtime, special, [sources[i] for i in index], [max_new_tokens] * len(index), emit, min_new_tokens)
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
