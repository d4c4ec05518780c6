"""Translation requests: validation, decoding strategy, and decoding on the model's scheduler.

Over-long input is refused, never truncated: a text over `max_input_chars` characters, or over
the model's `max_source_tokens` once tokenized, gets INVALID_ARGUMENT naming the text's index,
so a caller never receives a translation of half a sentence without knowing it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from collections import deque
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from seqcast.server import wakeups
from seqcast.server.errors import InvalidArgument
from seqcast.server.models import LoadedModel
from seqcast.server.scheduler import run_job
from seqcast.server.settings import ServerSettings
from seqcast.server.strategies import BeamSearch, Finish, Greedy, Sampling, Strategy, token_sequence
from seqcast.server.text import StreamDetokenizer


@dataclass(frozen=True)
class TranslateJob:
    model: LoadedModel
    sources: list[list[int]]  # token ids per text, end-of-sequence included
    limits: list[int]  # most new tokens per text
    # Absolute time.monotonic() after which decoding stops; None = no deadline.
    deadline: float | None
    strategy: Strategy = Greedy()


@dataclass
class Output:
    """One text's result; `finish` is set once its sequence ended."""

    tokens: list[int] = field(default_factory=list)
    finish: Finish | None = None


@dataclass(frozen=True)
class Piece:
    """A streamed piece of text `index`; `finish` set on its last piece."""

    index: int
    text: str
    finish: Finish | None
    output_tokens: int


def prepare(
    model: LoadedModel,
    texts: Sequence[str],
    max_new_tokens: int | None,
    settings: ServerSettings,
    time_remaining: float | None,
    strategy: Strategy = Greedy(),
) -> TranslateJob:
    """Checks a request against the settings and the model's limits; raises InvalidArgument."""
    name, most = model.name, model.manifest.max_new_tokens
    if not texts:
        raise InvalidArgument("texts is empty: send at least one text to translate")
    if len(texts) > settings.max_texts_per_request:
        raise InvalidArgument(f"{len(texts)} texts in one request; at most {settings.max_texts_per_request} are accepted: split the request")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidArgument(f"texts[{i}] is empty: every text must contain something to translate")
        if len(text) > settings.max_input_chars:
            raise InvalidArgument(
                f"texts[{i}] has {len(text)} characters; at most {settings.max_input_chars} are accepted: "
                "split the text into sentences and send them as separate texts"
            )
    if max_new_tokens is not None and not 1 <= max_new_tokens <= most:
        raise InvalidArgument(f"max_new_tokens must be between 1 and {most} for model {name}, got {max_new_tokens}")
    sources = model.codec.encode(texts)
    for i, ids in enumerate(sources):
        if len(ids) > model.manifest.max_source_tokens:
            raise InvalidArgument(
                f"texts[{i}] is {len(ids)} tokens long; model {name} accepts at most "
                f"{model.manifest.max_source_tokens}: split the text into sentences and send them as separate texts"
            )
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    return TranslateJob(model, sources, [max_new_tokens or most] * len(texts), deadline, check_strategy(strategy, settings))


OnToken = Callable[[int, int | None, Finish | None], None]


def check_strategy(strategy: Strategy, settings: ServerSettings) -> Strategy:
    """Refuses settings a strategy cannot decode with; raises InvalidArgument naming the field."""
    if isinstance(strategy, BeamSearch):
        if not 1 <= strategy.beam_size <= settings.max_beam_size:
            raise InvalidArgument(f"beam_search.beam_size must be between 1 and {settings.max_beam_size}, got {strategy.beam_size}")
        if not 0 <= strategy.length_penalty <= 10:
            raise InvalidArgument(f"beam_search.length_penalty must be between 0 and 10, got {strategy.length_penalty}")
    if isinstance(strategy, Sampling):
        if not 0 < strategy.temperature <= 100:
            raise InvalidArgument(f"sampling.temperature must be above 0 and at most 100, got {strategy.temperature}")
        if strategy.top_k < 0:
            raise InvalidArgument(f"sampling.top_k must be 0 (no limit) or more, got {strategy.top_k}")
        if not 0 < strategy.top_p <= 1:
            raise InvalidArgument(f"sampling.top_p must be above 0 and at most 1, got {strategy.top_p}")
    return strategy


def _rng(strategy: Strategy, index: int) -> np.random.Generator | None:
    """Text `index`'s own generator: seeded by (seed, index), so each text's draws are reproducible
    and independent of the other texts and of whatever else shares the batch."""
    if not isinstance(strategy, Sampling):
        return None
    return np.random.default_rng(None if strategy.seed is None else [strategy.seed, index])


async def _run(job: TranslateJob, stop: threading.Event, on_token: OnToken) -> None:
    special = job.model.manifest.special_tokens
    sequences = [
        token_sequence(job.strategy, special.eos, limit, partial(on_token, i), _rng(job.strategy, i))
        for i, limit in enumerate(job.limits)
    ]
    first = np.full(len(job.sources), special.bos, dtype=np.int64)
    assert job.model.scheduler is not None
    await run_job(
        job.model.scheduler, sequences, job.sources, special.pad, first, job.deadline, stop,
        "raise the deadline or lower max_new_tokens",
    )


async def translate(job: TranslateJob, stop: threading.Event) -> list[Output]:
    """Decodes every text of the job; `stop` set (client gone) ends decoding at the next step."""
    outputs = [Output() for _ in job.sources]

    def on_token(row: int, token: int | None, finish: Finish | None) -> None:
        if token is not None:
            outputs[row].tokens.append(token)
        outputs[row].finish = finish

    await _run(job, stop, on_token)
    return outputs


class _TokenMailbox:
    """Tokens from the decoding thread to the event loop.

    Tokens queue here and the handler drains them all at once, so a busy loop sends fewer,
    larger chunks; the mailbox asks for a wake-up only when it was empty, and the scheduler
    sends the wake-ups of one step together (`seqcast.server.wakeups`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[tuple[int, int | None, Finish | None]] = deque()
        self.lock = threading.Lock()
        self.ready = asyncio.Event()
        self.woken = False

    def put(self, row: int, token: int | None, finish: Finish | None) -> None:
        with self.lock:
            self.items.append((row, token, finish))
            if self.woken:
                return
            self.woken = True
        wakeups.call_soon(self.loop, self.ready.set)

    def take(self) -> list[tuple[int, int | None, Finish | None]]:
        with self.lock:
            items, self.items = list(self.items), deque()
            self.woken = False
            self.ready.clear()
        return items


async def translate_stream(job: TranslateJob, stop: threading.Event) -> AsyncIterator[Piece]:
    """Yields text pieces as tokens are decoded; each text's last piece carries its finish.

    Tokens that arrived together are sent as one piece per text.
    """
    mailbox = _TokenMailbox(asyncio.get_running_loop())
    outcome: list[BaseException | None] = []

    async def run() -> None:
        try:
            await _run(job, stop, mailbox.put)
            outcome.append(None)
        except BaseException as e:  # handed to the consumer below, which re-raises it
            outcome.append(e)
        mailbox.ready.set()

    # Held so the task is not garbage-collected while it runs (asyncio keeps weak references).
    task = asyncio.create_task(run())
    detokenizers = [StreamDetokenizer(job.model.codec) for _ in job.sources]
    try:
        while True:
            await mailbox.ready.wait()
            finished = bool(outcome)
            pieces: dict[int, tuple[str, Finish | None]] = {}
            for row, token, finish in mailbox.take():
                if finish is Finish.STOPPED:
                    continue
                text = detokenizers[row].push(token) if token is not None else ""
                if finish is not None:
                    text += detokenizers[row].finish()
                pieces[row] = (pieces.get(row, ("", None))[0] + text, finish)
            for row, (text, finish) in pieces.items():
                yield Piece(row, text, finish, len(detokenizers[row].ids))
            if finished:
                if outcome[0] is not None:
                    raise outcome[0]
                return
    finally:
        # The caller stopped reading (or something failed): decoding ends within one step.
        stop.set()
        del task
