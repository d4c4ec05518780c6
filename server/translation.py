"""Translation requests, the task layer: validate, tokenize, decode on the model's scheduler, and
turn the request's events into text, for unary and streaming calls alike.

Builds on `seqcast.server.scheduler` (admission and the request handle) and
`seqcast.bundle.strategies` (greedy, beam search, sampling). Over-long input is refused, never
truncated: a text over `max_input_chars` characters, or over the model's `max_source_tokens`
once tokenized, gets InvalidArgument naming the text's index, so a caller never receives a
translation of half a sentence without knowing it.

A request may ask for alignments (`TranslateJob.alignments`): each text's sequence then emits
its tokens with their rows of the decoder's alignments output (`strategies.AlignedToken`), and
results and pieces carry them with the source and target tokens spelled out. A model whose
bundle has no alignments output refuses such a request with `Unsupported`, saying how to get them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

from seqcast.bundle.strategies import AlignedToken, BeamSearch, Finish, Greedy, Sampling, Strategy, token_sequence
from seqcast.bundle.text import StreamDetokenizer, TextCodec
from seqcast.server.errors import DeadlineExceeded, InvalidArgument, Unsupported
from seqcast.server.models import LoadedModel
from seqcast.server.scheduler import RequestHandle, Work
from seqcast.server.settings import ServerSettings

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
    # Each token with its alignment (the model has the output: `prepare` checked).
    alignments: bool = False


@dataclass(frozen=True)
class Alignments:
    """Word alignments of a text, or of the tokens of one piece of it: for each output token, one
    decoder layer's cross-attention over the source tokens, averaged over heads."""

    # The source's tokens (end-of-sequence included); empty on a text's later pieces.
    source_tokens: list[str]
    target_tokens: list[str]
    # (len(target_tokens), source tokens) float32; each row sums to 1.
    weights: np.ndarray


@dataclass(frozen=True)
class Translation:
    """One text's whole result."""

    text: str
    finish: Finish | None
    input_tokens: int
    output_tokens: int
    alignments: Alignments | None = None


@dataclass(frozen=True)
class Piece:
    """The text that text `index` gained since its last piece; `finish` set on its last piece.
    With alignments, a piece may have tokens (and their rows) but no text yet."""

    index: int
    text: str
    finish: Finish | None
    output_tokens: int
    alignments: Alignments | None = None


def prepare(
    model: LoadedModel,
    texts: Sequence[str],
    max_new_tokens: int | None,
    settings: ServerSettings,
    time_remaining: float | None,
    strategy: Strategy = Greedy(),
    min_new_tokens: int | None = None,
    alignments: bool = False,
) -> TranslateJob:
    """Checks a request against the settings and the model's limits; raises InvalidArgument, or
    Unsupported for alignments from a model without them."""
    name, most = model.name, model.manifest.max_new_tokens
    if alignments and model.manifest.decoder.alignments is None:
        raise _without_alignments(model)
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
    return TranslateJob(model, sources, [limit] * len(texts), deadline, strategy, min_new_tokens or 0, alignments)


def _without_alignments(model: LoadedModel) -> Unsupported:
    """The refusal of alignments from `model`, with what would give it them."""
    manifest = model.manifest
    how = {
        "transformer": "add them to the bundle with `python -m seqcast.export.translation.add_alignments <bundle directory>` "
                       "or export it again with `seqcast export`",
        "marian": "import the checkpoint again with `seqcast import-hf`, which adds them",
    }.get(manifest.architecture, f"only transformer bundles have them ({manifest.architecture} decoders have no single "
                                 "cross-attention layer to read)")
    return Unsupported(f"model {model.name} (version {manifest.version}) cannot return alignments: its decoder has no "
                       f"alignments output; {how}, or ask without alignments")


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


def _submit(job: TranslateJob, stream: bool) -> RequestHandle:
    special = job.model.manifest.special_tokens
    sequences = [
        token_sequence(job.strategy, special.eos, limit, _rng(job.strategy, i), job.min_new_tokens,
                       len(source) if job.alignments else None)
        for i, (limit, source) in enumerate(zip(job.limits, job.sources))
    ]
    first = np.full(len(job.sources), special.bos, dtype=np.int64)
    assert job.model.scheduler is not None
    return job.model.scheduler.submit(Work(sequences, job.sources, special.pad, first), job.deadline, stream)


# (index of the text, its new token or None, finish); the token is an AlignedToken with alignments.
TokenEvent = tuple[int, int | AlignedToken | None, Finish | None]


async def _events(job: TranslateJob, stream: bool) -> AsyncIterator[list[TokenEvent]]:
    """The request's events from its handle (with `stream`, as each step gives them; without,
    all at the end); a passed deadline says what to change."""
    try:
        async with aclosing(_submit(job, stream).events()) as reader:
            async for events in reader:
                yield events
    except DeadlineExceeded as e:
        raise DeadlineExceeded(f"{e}; {TOO_SLOW}") from None


async def translate(job: TranslateJob) -> list[Translation]:
    """Decodes every text of the job and returns each whole."""
    items: list[list[int | AlignedToken]] = [[] for _ in job.sources]
    finishes: list[Finish | None] = [None] * len(job.sources)
    async with aclosing(_events(job, stream=False)) as stream:
        async for events in stream:
            for index, item, finish in events:
                if item is not None:
                    items[index].append(item)
                if finish is not None:
                    finishes[index] = finish
    codec = job.model.codec
    assert codec is not None
    results = []
    for got, finish, source in zip(items, finishes, job.sources):
        ids = _ids(got)
        aligned = _alignments(codec, source, got) if job.alignments else None
        results.append(Translation(codec.decode(ids), finish, len(source), len(ids), aligned))
    return results


def _ids(items: Sequence[int | AlignedToken]) -> list[int]:
    return [item.id if isinstance(item, AlignedToken) else item for item in items]


def _alignments(codec: TextCodec, source: Sequence[int] | None, items: Sequence[int | AlignedToken]) -> Alignments:
    """The alignments of `items` (all AlignedTokens), with the source's tokens unless `source` is None."""
    width = 0 if source is None else len(source)
    rows = [item.row for item in items if isinstance(item, AlignedToken)]
    return Alignments(
        source_tokens=[] if source is None else codec.source_pieces(source),
        target_tokens=codec.target_pieces(_ids(items)),
        weights=np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32),
    )


async def translate_stream(job: TranslateJob) -> AsyncIterator[list[Piece]]:
    """Yields, for every delivery of events, one piece per text that gained text or ended.

    Tokens that arrived together (a reader that lags) become one piece per text, decoded with one
    call of the incremental detokenizer.
    """
    codec = job.model.codec
    assert codec is not None
    detokenizers = [StreamDetokenizer(codec) for _ in job.sources]
    async with aclosing(_events(job, stream=True)) as stream:
        async for events in stream:
            pieces = _pieces(events, detokenizers, job.sources if job.alignments else None)
            if pieces:
                yield pieces


def _pieces(events: list[TokenEvent], detokenizers: list[StreamDetokenizer], sources: list[list[int]] | None) -> list[Piece]:
    """One piece per text that gained text (with `sources`: tokens) or ended in `events`; with
    `sources`, each piece carries its tokens' alignments, and a text's first piece its source tokens."""
    news: dict[int, tuple[list[int | AlignedToken], Finish | None]] = {}
    for index, item, finish in events:
        items, _ = news.get(index, ([], None))
        if item is not None:
            items.append(item)
        news[index] = (items, finish)
    pieces = []
    for index, (items, finish) in news.items():
        if finish is Finish.STOPPED:
            continue
        stream = detokenizers[index]
        first = not stream.ids
        text = stream.push(_ids(items)) if items else ""
        if finish is not None:
            text += stream.finish()
        aligned = None
        if sources is not None:
            aligned = _alignments(stream.codec, sources[index] if first else None, items)
        if text or finish is not None or (aligned is not None and items):
            pieces.append(Piece(index, text, finish, len(stream.ids), aligned))
    return pieces
