"""Decoding strategies: what one sequence chooses from each step's output.

A `Sequence` is one text (or series) being decoded. It occupies `width` rows of the running
batch (one, or `beam_size` for beam search), and after every step `advance` takes its rows'
outputs and says which of its rows go on (by local index, repeats allowed: beams reorder and
duplicate rows) and what each is fed next. It reports what it produced through its `emit`
callback as it goes. Strategies never see other sequences, so a sequence decodes the same
whatever else shares the batch.

* `GreedySequence`: the most likely token.
* `SamplingSequence`: temperature, then top-k, then top-p (nucleus) filtering, then a draw from
  the sequence's own generator; a seed makes the draws, and so the output, reproducible.
* `BeamSequence`: beam search with a length penalty; it emits its best hypothesis once it ends
  (a beam's tokens are not final until then, so nothing is streamed before).
* `ForecastSequence`: every output column is emitted; the point column is fed back.
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


# Called as a sequence produces: (item, finish). The item is a token id or a forecast step's
# columns; the end-of-sequence token itself is not output: its sequence gets (None, Finish.EOS).
Emit = Callable[[Any, "Finish | None"], None]


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


class Sequence(ABC):
    """One sequence in the running batch; see the module docstring."""

    def __init__(self, limit: int, emit: Emit) -> None:
        self.limit = limit
        self.emit = emit
        self.generated = 0
        self.finished = False

    @property
    @abstractmethod
    def width(self) -> int:
        """Rows the sequence occupies now."""

    @abstractmethod
    def advance(self, outputs: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Takes its rows' step outputs (width, K); returns the local rows that go on and their next inputs."""

    def stop(self) -> None:
        """Ends the sequence early (deadline, cancellation)."""
        self.finished = True
        self.emit(None, Finish.STOPPED)


class _TokenSequence(Sequence):
    """A single-row token sequence; subclasses choose the token."""

    def __init__(self, eos: int, limit: int, emit: Emit) -> None:
        super().__init__(limit, emit)
        self.eos = eos

    @property
    def width(self) -> int:
        return 0 if self.finished else 1

    @abstractmethod
    def choose(self, logits: np.ndarray) -> int: ...

    def advance(self, outputs: np.ndarray) -> tuple[list[int], np.ndarray]:
        token = self.choose(outputs[0])
        self.generated += 1
        if token == self.eos:
            self.finished = True
            self.emit(None, Finish.EOS)
            return [], np.empty(0, dtype=np.int64)
        if self.generated >= self.limit:
            self.finished = True
            self.emit(token, Finish.LENGTH)
            return [], np.empty(0, dtype=np.int64)
        self.emit(token, None)
        return [0], np.array([token], dtype=np.int64)


class GreedySequence(_TokenSequence):
    def choose(self, logits: np.ndarray) -> int:
        return int(logits.argmax())


class SamplingSequence(_TokenSequence):
    def __init__(self, eos: int, limit: int, emit: Emit, options: Sampling, rng: np.random.Generator) -> None:
        super().__init__(eos, limit, emit)
        self.options, self.rng = options, rng

    def choose(self, logits: np.ndarray) -> int:
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

    def __init__(self, eos: int, limit: int, emit: Emit, options: BeamSearch) -> None:
        super().__init__(limit, emit)
        self.eos, self.options = eos, options
        self.k = options.beam_size
        # All beams start identical; only the first may expand, so the first step picks k
        # different tokens instead of the same one k times.
        self.scores = np.array([0.0] + [-math.inf] * (self.k - 1))
        self.beams: list[list[int]] = [[] for _ in range(self.k)]
        self.ended: list[tuple[float, list[int], Finish]] = []

    @property
    def width(self) -> int:
        return 0 if self.finished else len(self.beams)

    def _normalised(self, score: float, length: int) -> float:
        return score / max(length, 1) ** self.options.length_penalty

    def advance(self, outputs: np.ndarray) -> tuple[list[int], np.ndarray]:
        total = self.scores[:, None] + _log_softmax(outputs)  # (width, V)
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
                tokens = self.beams[parent] + [token]
                self.ended.append((self._normalised(score, len(tokens)), tokens, Finish.LENGTH))
            alive = []
        if len(self.ended) >= self.k or not alive:
            self._finish()
            return [], np.empty(0, dtype=np.int64)
        self.beams = [self.beams[p] + [t] for p, t, _ in alive]
        self.scores = np.array([s for _, _, s in alive])
        return [p for p, _, _ in alive], np.array([t for _, t, _ in alive], dtype=np.int64)

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

    def __init__(self, limit: int, emit: Emit, point_column: int) -> None:
        super().__init__(limit, emit)
        self.point_column = point_column

    @property
    def width(self) -> int:
        return 0 if self.finished else 1

    def advance(self, outputs: np.ndarray) -> tuple[list[int], np.ndarray]:
        columns = outputs[0]
        self.generated += 1
        if self.generated >= self.limit:
            self.finished = True
            self.emit(columns, Finish.LENGTH)
            return [], np.empty(0, dtype=np.float32)
        self.emit(columns, None)
        return [0], np.array([columns[self.point_column]], dtype=np.float32)


def token_sequence(strategy: Strategy, eos: int, limit: int, emit: Emit, rng: np.random.Generator | None) -> Sequence:
    """The sequence object for one text decoded with `strategy`."""
    if isinstance(strategy, BeamSearch):
        return BeamSequence(eos, limit, emit, strategy)
    if isinstance(strategy, Sampling):
        return SamplingSequence(eos, limit, emit, strategy, rng or np.random.default_rng(strategy.seed))
    return GreedySequence(eos, limit, emit)
