"""The decoding loop driven by a scripted runtime: rows leave as they finish, state follows rows."""

from __future__ import annotations

import numpy as np

from seqcast.bundle.decoding import Decoder, Finish, forecast_decode, greedy_decode
from seqcast.bundle.manifest import DecoderSpec, EncoderSpec, SpecialTokens, StateSpec, TensorSpec
from seqcast.bundle.strategies import GreedySequence

from scripted_runtime import BOS, EOS, CountingRuntime

def run(scripts, limits, min_new_tokens=0):
    runtime = CountingRuntime(dict(enumerate(scripts)))
    events: dict[int, list] = {i: [] for i in range(len(scripts))}
    timings = greedy_decode(
        runtime,
        SpecialTokens(pad=0, bos=BOS, eos=EOS),
        [[i, EOS] for i in range(len(scripts))],
        limits,
        lambda row, token, finish: events[row].append((token, finish)),
        min_new_tokens,
    )
    return runtime, events, timings


def test_each_row_gets_its_own_tokens_and_leaves_at_end_of_sequence() -> None:
    scripts = [[5, 6, 7], [8], [3, 4, 5, 6, 7, 8]]
    runtime, events, timings = run(scripts, [20, 20, 20])
    for row, script in enumerate(scripts):
        assert [t for t, _ in events[row]] == script + [None]
        assert [f for _, f in events[row]] == [None] * len(script) + [Finish.EOS]
    # Rows leave the batch as soon as they finish: 3 rows, then 2, then 1.
    calls = [rows for rows, _ in runtime.steps]
    assert calls == [3, 3, 2, 2, 1, 1, 1]
    assert timings.rows_per_step == calls


def test_the_token_limit_ends_a_row_with_length() -> None:
    _, events, _ = run([[5, 6, 7, 8], [9]], [2, 2])
    assert events[0] == [(5, None), (6, Finish.LENGTH)]
    assert events[1] == [(9, None), (None, Finish.EOS)]


def test_stop_ends_the_chosen_sequences_and_frees_only_their_rows() -> None:
    runtime = CountingRuntime({0: [5, 6, 7, 8], 1: [9, 9, 9, 9]})
    events: dict[int, list] = {0: [], 1: []}
    sequences = [GreedySequence(EOS, 10) for _ in range(2)]
    for i, seq in enumerate(sequences):
        seq.emit = lambda token, finish, i=i: events[i].append((token, finish))
    decoder = Decoder(runtime)
    decoder.join(sequences, [[0, EOS], [1, EOS]], 0, np.full(2, BOS, dtype=np.int64))
    decoder.step()
    decoder.step()
    decoder.stop([sequences[0]])
    assert events[0] == [(5, None), (6, None), (None, Finish.STOPPED)]
    assert decoder.rows == 1
    while decoder.active:
        decoder.step()
    assert events[1] == [(9, None)] * 4 + [(None, Finish.EOS)]


def test_min_new_tokens_holds_back_end_of_sequence_until_reached() -> None:
    # Row 0's script ends after one token; it must go on to 3 tokens (the scripted runtime then
    # scores only end-of-sequence, so the choice falls to the lowest other id, 0).
    _, events, _ = run([[5], [6, 7, 8, 9]], [3, 10], min_new_tokens=3)
    assert [t for t, _ in events[0]] == [5, 0, 0] and events[0][-1][1] is Finish.LENGTH
    assert events[1] == [(6, None), (7, None), (8, None), (9, None), (None, Finish.EOS)]


class ScriptedForecaster:
    """A recurrent "forecaster" whose state counts steps: step k of a row outputs the columns
    (fed - 1, fed, fed + 1 + k), so the test sees which value was fed back at every step."""

    def __init__(self) -> None:
        self.encoder_spec = EncoderSpec(
            source="input_values",
            inputs=[TensorSpec(name="input_values", dtype="float32", shape=["batch", "source_length"]),
                    TensorSpec(name="encoder_attention_mask", dtype="int64", shape=["batch", "source_length"])],
            outputs=[TensorSpec(name="steps0", dtype="float32", shape=["batch", 1])],
        )
        self.decoder_spec = DecoderSpec(
            feed="input_values",
            output="quantiles",
            state=[StateSpec(input="steps", output="steps_out", init="encoder", source="steps0")],
            static=[],
            inputs=[TensorSpec(name="input_values", dtype="float32", shape=["batch", 1])],
            outputs=[TensorSpec(name="quantiles", dtype="float32", shape=["batch", 1, 3])],
        )
        self.contexts: list[np.ndarray] = []

    def encode(self, source: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        self.contexts.append(source.copy())
        return {"steps0": np.zeros((len(source), 1), dtype=np.float32)}

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fed, k = feeds["input_values"], feeds["steps"]
        assert fed.dtype == np.float32
        columns = np.concatenate([fed - 1, fed, fed + 1 + k], axis=1)[:, None, :]
        return {"quantiles": columns, "steps_out": k + 1}


def test_forecasting_feeds_back_the_point_column_and_ends_rows_at_their_horizon() -> None:
    runtime = ScriptedForecaster()
    events: dict[int, list] = {0: [], 1: []}
    contexts = [np.array([1.0, 2.0, 5.0], dtype=np.float32), np.array([7.0], dtype=np.float32)]
    timings = forecast_decode(runtime, contexts, [3, 1], point_column=1,
                              emit=lambda row, columns, finish: events[row].append((columns, finish)))
    # The context is right-padded with zeros; the first feed is each row's last value.
    assert runtime.contexts[0].tolist() == [[1.0, 2.0, 5.0], [7.0, 0.0, 0.0]]
    assert [c.tolist() for c, _ in events[0]] == [[4.0, 5.0, 6.0], [4.0, 5.0, 7.0], [4.0, 5.0, 8.0]]
    assert [f for _, f in events[0]] == [None, None, Finish.LENGTH]
    assert [(c.tolist(), f) for c, f in events[1]] == [([6.0, 7.0, 8.0], Finish.LENGTH)]
    assert timings.rows_per_step == [2, 1, 1]


def test_state_bytes_is_what_the_batch_holds_through_joins_steps_departures_and_trims() -> None:
    """The decoder keeps its state's size up to date without summing the tensors every step."""
    runtime = CountingRuntime({0: [5] * 2, 1: [6] * 12, 2: [7] * 5})
    decoder = Decoder(runtime)

    def held() -> int:
        assert decoder.batch is not None
        return sum(v.nbytes for v in [*decoder.batch.state.values(), *decoder.batch.static.values()])

    def join(row: int) -> None:
        sequence = GreedySequence(EOS, 20)
        sequence.emit = lambda token, finish: None
        decoder.join([sequence], [[row, EOS]], 0, np.full(1, BOS, dtype=np.int64))

    assert decoder.state_bytes == 0
    join(0)
    assert decoder.state_bytes == held()  # an empty cache: the static inputs only
    join(1)
    for step in range(12):
        if step == 4:
            join(2)  # joins a batch whose caches are 4 slots long: left-padded to them
        decoder.step()
        assert decoder.state_bytes == held(), step
    # Row 0 left after 3 steps and row 2 after 6 (a trim in between); row 1 decodes alone.
    assert decoder.rows == 1
    decoder.step()
    assert decoder.rows == 0 and decoder.state_bytes == 0
