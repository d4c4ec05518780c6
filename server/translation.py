"""Translation requests, the task layer: validate, tokenize, decode on the model's scheduler, and
turn the request's events into text, for unary and streaming calls alike.

Builds on `seqcast.server.scheduler` (admission and the request handle) and
`seqcast.server.strategies` (greedy, beam search, sampling). Over-long input is refused, never
truncated: a text over `max_input_chars` characters, or over the model's `max_source_tokens`
once tokenized, gets InvalidArgument naming the text's index, so a caller never receives a
translation of half a sentence without knowing it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

from seqcast.server.errors import DeadlineExceeded, InvalidArgument
from seqcast.server.models import LoadedModel
from seqcast.server.scheduler import RequestHandle, Work
from seqcast.server.settings import ServerSettings
from seqcast.server.strategies import BeamSearch, Finish, Greedy, Sampling, Strategy, token_sequence
from seqcast.server.text import StreamDetokenizer

TOO_SLOW = "raise the deadline or lower max_new_tokens"


@dataclass(frozen=True)
class TranslateJob:
    model: LoadedModel
    sources: list[list[int]]  # token ids per text, end-of-sequence included
    limits: list[int]  # most new tokens per text
    # Absolute time.monotonic() after which decoding stops; None = no deadline.
    deadline: float | None
    strategy: Strategy = Greedy()
    # End-of-sequence can't be chosen before this many new tokens.
    min_new_tokens: int = 0


@dataclass(frozen=True)
class Translation:
    """One text's whole result."""

    text: str
    finish: Finish | None
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Piece:
    """The text that text `index` gained since its last piece; `finish` set on its last piece."""

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
    min_new_tokens: int | None = None,
) -> TranslateJob:
    """Checks a request against the settings and the model's limits; raises InvalidArgument."""
    name, most = model.name, model.manifest.max_new_tokens
    if not texts:
        raise InvalidArgument("texts is empty: send at least one text to translate", "texts")
    if len(texts) > settings.max_texts_per_request:
        raise InvalidArgument(f"{len(texts)} texts in one request; at most {settings.max_texts_per_request} are accepted: split the request", "texts")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidArgument(f"texts[{i}] is empty: every text must contain something to translate", f"texts[{i}]")
        if len(text) > settings.max_input_chars:
            raise InvalidArgument(
                f"texts[{i}] has {len(text)} characters; at most {settings.max_input_chars} are accepted: "
                "split the text into sentences and send them as separate texts", f"texts[{i}]",
            )
    if max_new_tokens is not None and not 1 <= max_new_tokens <= most:
        raise InvalidArgument(f"max_new_tokens must be between 1 and {most} for model {name}, got {max_new_tokens}", "max_new_tokens")
    limit = max_new_tokens or most
    if min_new_tokens is not None and not 0 <= min_new_tokens <= limit:
        raise InvalidArgument(f"min_new_tokens must be between 0 and max_new_tokens ({limit}), got {min_new_tokens}", "min_new_tokens")
    strategy = check_strategy(strategy, settings)
    rows = len(texts) * (strategy.beam_size if isinstance(strategy, BeamSearch) else 1)
    if model.scheduler is not None and rows > model.scheduler.limits.max_batch_rows:
        raise InvalidArgument(
            f"the request needs {rows} decoding rows; model {name} decodes at most "
            f"{model.scheduler.limits.max_batch_rows} at once: send fewer texts or a smaller beam", "texts"
        )
    sources = model.codec.encode(texts)
    for i, ids in enumerate(sources):
        if len(ids) > model.manifest.max_source_tokens:
            raise InvalidArgument(
                f"texts[{i}] is {len(ids)} tokens long; model {name} accepts at most "
                f"{model.manifest.max_source_tokens}: split the text into sentences and send them as separate texts",
                f"texts[{i}]",
            )
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    return TranslateJob(model, sources, [limit] * len(texts), deadline, strategy, min_new_tokens or 0)


def check_strategy(strategy: Strategy, settings: ServerSettings) -> Strategy:
    """Refuses settings a strategy cannot decode with; raises InvalidArgument naming the field."""
    if isinstance(strategy, BeamSearch):
        if not 1 <= strategy.beam_size <= settings.max_beam_size:
            raise InvalidArgument(f"beam_search.beam_size must be between 1 and {settings.max_beam_size}, got {strategy.beam_size}", "decoding.beam_search.beam_size")
        if not 0 <= strategy.length_penalty <= 10:
            raise InvalidArgument(f"beam_search.length_penalty must be between 0 and 10, got {strategy.length_penalty}", "decoding.beam_search.length_penalty")
    if isinstance(strategy, Sampling):
        if not 0 < strategy.temperature <= 100:
            raise InvalidArgument(f"sampling.temperature must be above 0 and at most 100, got {strategy.temperature}", "decoding.sampling.temperature")
        if strategy.top_k < 0:
            raise InvalidArgument(f"sampling.top_k must be 0 (no limit) or more, got {strategy.top_k}", "decoding.sampling.top_k")
        if not 0 < strategy.top_p <= 1:
            raise InvalidArgument(f"sampling.top_p must be above 0 and at most 1, got {strategy.top_p}", "decoding.sampling.top_p")
    return strategy


def _rng(strategy: Strategy, index: int) -> np.random.Generator | None:
    """Text `index`'s own generator: seeded by (seed, index), so each text's draws are reproducible
    and independent of the other texts and of whatever else shares the batch."""
    if not isinstance(strategy, Sampling):
        return None
    return np.random.default_rng(None if strategy.seed is None else [strategy.seed, index])


def _submit(job: TranslateJob) -> RequestHandle:
    special = job.model.manifest.special_tokens
    sequences = [
        token_sequence(job.strategy, special.eos, limit, _rng(job.strategy, i), job.min_new_tokens)
        for i, limit in enumerate(job.limits)
    ]
    first = np.full(len(job.sources), special.bos, dtype=np.int64)
    assert job.model.scheduler is not None
    return job.model.scheduler.submit(Work(sequences, job.sources, special.pad, first), job.deadline)


async def _events(job: TranslateJob) -> AsyncIterator[list[tuple[int, int | None, Finish | None]]]:
    """The request's events from its handle; a passed deadline says what to change."""
    try:
        async with aclosing(_submit(job).events()) as stream:
            async for events in stream:
                yield events
    except DeadlineExceeded as e:
        raise DeadlineExceeded(f"{e}; {TOO_SLOW}") from None


async def translate(job: TranslateJob) -> list[Translation]:
    """Decodes every text of the job and returns each whole."""
    tokens: list[list[int]] = [[] for _ in job.sources]
    finishes: list[Finish | None] = [None] * len(job.sources)
    async with aclosing(_events(job)) as stream:
        async for events in stream:
            for index, token, finish in events:
                if token is not None:
                    tokens[index].append(token)
                if finish is not None:
                    finishes[index] = finish
    codec = job.model.codec
    assert codec is not None
    return [Translation(codec.decode(ids), finish, len(src), len(ids)) for ids, finish, src in zip(tokens, finishes, job.sources)]


async def translate_stream(job: TranslateJob) -> AsyncIterator[list[Piece]]:
    """Yields, for every delivery of events, one piece per text that gained text or ended.

    Tokens that arrived together (a reader that lags) become one piece per text, decoded with one
    call of the incremental detokenizer.
    """
    codec = job.model.codec
    assert codec is not None
    detokenizers = [StreamDetokenizer(codec) for _ in job.sources]
    async with aclosing(_events(job)) as stream:
        async for events in stream:
            pieces = _pieces(events, detokenizers)
            if pieces:
                yield pieces


def _pieces(events: list[tuple[int, int | None, Finish | None]], detokenizers: list[StreamDetokenizer]) -> list[Piece]:
    """One piece per text that gained text or ended in `events`."""
    news: dict[int, tuple[list[int], Finish | None]] = {}
    for index, token, finish in events:
        ids, _ = news.get(index, ([], None))
        if token is not None:
            ids.append(token)
        news[index] = (ids, finish)
    pieces = []
    for index, (ids, finish) in news.items():
        if finish is Finish.STOPPED:
            continue
        stream = detokenizers[index]
        text = stream.push(ids) if ids else ""
        if finish is not None:
            text += stream.finish()
        if text or finish is not None:
            pieces.append(Piece(index, text, finish, len(stream.ids)))
    return pieces
