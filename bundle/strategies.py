"""Decoding strategies: what one sequence chooses from each step's output.

A `Sequence` is one text (or series) being decoded. It occupies `width` rows of the running
batch (one, or `beam_size` for beam search), and after every step `advance` takes its rows'
outputs and says which of its rows go on (by local index, repeats allowed: beams reorder and
duplicate rows) and what each is fed next. It reports what it produced through its `emit`
callback as it goes, which whoever drives it (the scheduler, or the offline helpers in
`seqcast.bundle.decoding`) sets before the first step. Strategies never see other sequences, so
a sequence decodes the same whatever else shares the batch.

* `GreedySequence`: the most likely token.
* `SamplingSequence`: temperature, then top-k, then top-p (nucleus) filtering, then a draw from
  the sequence's own generator; a seed makes the draws, and so the output, reproducible.
* `BeamSequence`: beam search with a length penalty; it emits its best hypothesis once it ends
  (a beam's tokens are not final until then, so nothing is streamed before).
* `ForecastSequence`: every output column is emitted; the point column is fed back.

A token sequence whose `alignment_width` is set (its request asked for alignments) also takes
its rows of the decoder's alignments output at each step and emits each token as an
`AlignedToken`: the id with the row of the step that chose it, cut to the real source tokens.
Beam search keeps the rows in its hypotheses, so they follow the beams as they reorder and the
rows emitted are those of the winning hypothesis.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


class Finish(enum.Enum):
    EOS = "eos"
    LENGTH = "length"
    STOPPED = "stopped"  # the caller asked to stop (deadline passed, cancelled, shutting down)


# Called as a sequence produces: (item, finish). The item is a token id (an `AlignedToken` when
# the sequence reports alignments) or a forecast step's columns; the end-of-sequence token itself
# is not output: its sequence gets (None, Finish.EOS).
Emit = Callable[[Any, "Finish | None"], None]


@dataclass(frozen=True, slots=True)
class AlignedToken:
    """A token and its alignment: the decoder's alignments output at the step that chose it,
    (source tokens,) over the real source tokens (end-of-sequence included), summing to 1."""

    id: int
    row: np.ndarray


@dataclass(frozen=True)
class Greedy:
    pass


@dataclass(frozen=True)
class BeamSearch:
    beam_size: int = 4
    # Hypotheses are ranked by sum of log-probabilities / length ** length_penalty.
    length_penalty: float = 1.0


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no limit
    seed: int | None = None


Strategy = Greedy | BeamSearch | Sampling


def _unbound(item: Any, finish: "Finish | None") -> None:
    raise RuntimeError("a sequence decoded before its emit callback was set")


class Sequence(ABC):
    """One sequence in the running batch; see the module docstring."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.emit: Emit = _unbound
        self.generated = 0
        self.finished = False
        # Real source tokens of a sequence that reports alignments; None: it does not.
        self.alignment_width: int | None = None

    @property
    @abstractmethod
    def width(self) -> int:
        """Rows the sequence occupies now."""

    @abstractmethod
    def advance(self, outputs: np.ndarray, best: np.ndarray, alignments: np.ndarray | None = None) -> tuple[list[int], list[Any]]:
        """Takes its rows' step outputs (width, K), each row's argmax (width,) and, when it reports
        alignments, its rows of the alignments output (width, S >= alignment_width); returns the
        local rows that go on and their next inputs."""

    def _item(self, token: int, alignments: np.ndarray | None, row: int) -> int | AlignedToken:
        """The token as emitted: with its alignment (row `row`, real source tokens only) when asked for."""
        if alignments is None:
            return token
        return AlignedToken(token, alignments[row, : self.alignment_width].copy())

    def stop(self) -> None:
        """Ends the sequence early (deadline, cancellation)."""
        self.finished = True
        self.emit(None, Finish.STOPPED)


class _TokenSequence(Sequence):
    """A single-row token sequence; subclasses choose the token. End-of-sequence can't be chosen
    before `min_length` tokens were generated."""

    # Whether `choose` reads the logits (else only their argmax): before `min_length`, logits are
    # copied with end-of-sequence masked for choosers that read them, and for the others only when
    # end-of-sequence is the argmax.
    reads_logits = True

    def __init__(self, eos: int, limit: int, min_length: int = 0) -> None:
        super().__init__(limit)
        self.eos = eos
        self.min_length = min_length

    @property
    def width(self) -> int:
        return 0 if self.finished else 1

    @abstractmethod
    def choose(self, logits: np.ndarray, best: int) -> int:
        """The next token from the row's logits; `best` is their argmax."""

    def advance(self, outputs: np.ndarray, best: np.ndarray, alignments: np.ndarray | None = None) -> tuple[list[int], list[Any]]:
        logits, top = outputs[0], int(best[0])
        if self.generated < self.min_length and (self.reads_logits or top == self.eos):
            logits = logits.copy()
            logits[self.eos] = -np.inf
            top = int(logits.argmax())
        token = self.choose(logits, top)
        self.generated += 1
        if token == self.eos:
            self.finished = True
            self.emit(None, Finish.EOS)
            return [], []
        if self.generated >= self.limit:
            self.finished = True
            self.emit(self._item(token, alignments, 0), Finish.LENGTH)
            return [], []
        self.emit(self._item(token, alignments, 0), None)
        return [0], [token]


class GreedySequence(_TokenSequence):
    reads_logits = False

    def choose(self, logits: np.ndarray, best: int) -> int:
        return best


class SamplingSequence(_TokenSequence):
    def __init__(self, eos: int, limit: int, options: Sampling, rng: np.random.Generator, min_length: int = 0) -> None:
        super().__init__(eos, limit, min_length)
        self.options, self.rng = options, rng

    def choose(self, logits: np.ndarray, best: int) -> int:
        return sample_token(logits, self.options, self.rng)


def sample_token(logits: np.ndarray, options: Sampling, rng: np.random.Generator) -> int:
    """One draw from softmax(logits / temperature) restricted to the top-k and top-p tokens."""
    scaled = logits.astype(np.float64) / options.temperature
    order = np.argsort(-scaled, kind="stable")
    if options.top_k:
        order = order[: options.top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if options.top_p < 1.0:
        # The smallest prefix whose mass reaches top_p (at least one token).
        keep = int(np.searchsorted(np.cumsum(probs), options.top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(len(order), p=probs)])


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class BeamSequence(Sequence):
    """Beam search over `beam_size` rows; ends when `beam_size` hypotheses ended, or at the limit."""

    def __init__(self, eos: int, limit: int, options: BeamSearch, min_length: int = 0) -> None:
        super().__init__(limit)
        self.eos, self.options, self.min_length = eos, options, min_length
        self.k = options.beam_size
        # All beams start identical; only the first may expand, so the first step picks k
        # different tokens instead of the same one k times.
        self.scores = np.array([0.0] + [-math.inf] * (self.k - 1))
        # Each beam's items so far: token ids, or AlignedTokens when the sequence reports alignments.
        self.beams: list[list[Any]] = [[] for _ in range(self.k)]
        self.ended: list[tuple[float, list[Any], Finish]] = []

    @property
    def width(self) -> int:
        return 0 if self.finished else len(self.beams)

    def _normalised(self, score: float, length: int) -> float:
        return score / max(length, 1) ** self.options.length_penalty

    def advance(self, outputs: np.ndarray, best: np.ndarray, alignments: np.ndarray | None = None) -> tuple[list[int], list[Any]]:
        total = self.scores[:, None] + _log_softmax(outputs)  # (width, V)
        if self.generated < self.min_length:
            total[:, self.eos] = -math.inf
        vocab = total.shape[1]
        candidates = np.argsort(-total, axis=None, kind="stable")[: 2 * self.k]
        self.generated += 1
        alive: list[tuple[int, int, float]] = []
        for flat in candidates:
            parent, token = divmod(int(flat), vocab)
            score = float(total[parent, token])
            if score == -math.inf:
                break
            if token == self.eos:
                # The end-of-sequence token counts towards the length, as in training.
                self.ended.append((self._normalised(score, len(self.beams[parent]) + 1), self.beams[parent], Finish.EOS))
            else:
                alive.append((parent, token, score))
                if len(alive) == self.k:
                    break
        if self.generated >= self.limit:
            for parent, token, score in alive:
                tokens = self.beams[parent] + [self._item(token, alignments, parent)]
                self.ended.append((self._normalised(score, len(tokens)), tokens, Finish.LENGTH))
            alive = []
        if len(self.ended) >= self.k or not alive:
            self._finish()
            return [], []
        # A new beam's row is its parent's at this step: the step that chose the token.
        self.beams = [self.beams[p] + [self._item(t, alignments, p)] for p, t, _ in alive]
        self.scores = np.array([s for _, _, s in alive])
        return [p for p, _, _ in alive], [t for _, t, _ in alive]

    def _finish(self) -> None:
        self.finished = True
        _, tokens, finish = max(self.ended, key=lambda e: e[0])
        if finish is Finish.EOS:
            for token in tokens:
                self.emit(token, None)
            self.emit(None, Finish.EOS)
        else:
            for token in tokens[:-1]:
                self.emit(token, None)
            self.emit(tokens[-1], Finish.LENGTH)


class ForecastSequence(Sequence):
    """Emits every column of each step; the point column is fed back."""

    def __init__(self, limit: int, point_column: int) -> None:
        super().__init__(limit)
        self.point_column = point_column

    @property
    def width(self) -> int:
        return 0 if self.finished else 1

    def advance(self, outputs: np.ndarray, best: np.ndarray, alignments: np.ndarray | None = None) -> tuple[list[int], list[Any]]:
        columns = outputs[0]
        self.generated += 1
        if self.generated >= self.limit:
            self.finished = True
            self.emit(columns, Finish.LENGTH)
            return [], []
        self.emit(columns, None)
        return [0], [float(columns[self.point_column])]


def token_sequence(
    strategy: Strategy,
    eos: int,
    limit: int,
    rng: np.random.Generator | None = None,
    min_length: int = 0,
    alignment_width: int | None = None,
) -> Sequence:
    """The sequence object for one text decoded with `strategy`: at most `limit` new tokens, at
    least `min_length` before end-of-sequence may be chosen, and with `alignment_width` (the
    source's length in tokens) each token emitted with its alignment."""
    sequence: Sequence
    if isinstance(strategy, BeamSearch):
        sequence = BeamSequence(eos, limit, strategy, min_length)
    elif isinstance(strategy, Sampling):
        sequence = SamplingSequence(eos, limit, strategy, rng or np.random.default_rng(strategy.seed), min_length)
    else:
        sequence = GreedySequence(eos, limit, min_length)
    sequence.alignment_width = alignment_width
    return sequence
