"""A load generator for the streaming translation call: N concurrent clients for T seconds.

Built on `SeqcastClient.translate_stream`. Each client is a thread with its own channel and its
own HTTP/2 connection (`grpc.use_local_subchannel_pool`: without it gRPC core shares one
connection among channels with the same target and arguments), so N clients look to the server
like N independent callers rather than N streams multiplexed on one connection. The clients are
Python threads under one GIL: at high concurrency the generator itself can become the
bottleneck, which shows as rising time to first token with an idle server.

`run_load` drives the clients and returns a `LoadSummary`; `summarize` is the pure statistics
step (records -> summary) and is what the tests check exactly. `seqcast-client bench` is the
command-line front end.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np

from seqcast.client.client import SeqcastClient, SeqcastError, Tls, open_channel

# Short UI strings, the kind of text the server translates in practice; used without --texts.
DEFAULT_TEXTS = (
    "Save changes",
    "The file could not be opened.",
    "Are you sure you want to delete this item?",
    "Open recent",
    "Your password has expired.",
    "Check for updates",
    "No results found.",
    "Print the current document",
    "The connection to the server was lost.",
    "Undo",
    "Show hidden files",
    "Enter a name for the new folder.",
    "Downloading packages...",
    "Permission denied",
    "Select all",
    "The disk is almost full.",
    "Close the window without saving?",
    "Preferences",
    "An unknown error occurred.",
    "Copy the link to the clipboard",
)


@dataclass(frozen=True)
class RequestRecord:
    """One streaming request. Times are seconds since the run started (`time.perf_counter`)."""

    start: float  # just before the call
    end: float  # after the last chunk, or when the call failed
    # Arrival of each chunk that carried text or a new token, and the output tokens so far at it.
    chunk_times: tuple[float, ...]
    chunk_tokens: tuple[int, ...]
    status: str  # "OK", or the gRPC status code name ("UNAVAILABLE", "CANCELLED", ...)

    @property
    def output_tokens(self) -> int:
        return self.chunk_tokens[-1] if self.chunk_tokens else 0


@dataclass(frozen=True)
class LoadSummary:
    """What a run measured; every latency is in milliseconds, None when there was nothing to measure.

    Measured requests are those started at or after the end of the warm-up. Rates count what
    happened inside the window [window_start_s, window_start_s + window_s): requests that
    finished OK there, output tokens that arrived there (of any request).
    """

    concurrency: int
    window_start_s: float  # the warm-up length
    window_s: float  # from the end of the warm-up to when sending stopped
    # Measured requests, by outcome; warm-up requests are only counted.
    completed: int
    errors: dict[str, int]  # status code name -> count, by name
    warmup_requests: int
    # Throughput over the window; None for an empty window.
    requests_per_s: float | None
    output_tokens_per_s: float | None
    # Latencies of the measured requests that finished OK.
    ttft_p50_ms: float | None  # time to first token: start to the first chunk with text or a token
    ttft_p90_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None  # inter-token latency: gaps between such chunks, pooled over requests
    itl_p99_ms: float | None
    e2e_p50_ms: float | None  # end to end: start to the end of the stream
    e2e_p99_ms: float | None


def summarize(
    records: Sequence[RequestRecord], concurrency: int, window_start: float, window_end: float
) -> LoadSummary:
    """Statistics of a run's records over the window [window_start, window_end) (seconds).

    Percentiles are `numpy.percentile` with its default linear interpolation (Hyndman and Fan's
    type 7: the p-th percentile of n sorted values sits at position p/100 * (n - 1)). Inter-token
    gaps are pooled, so a long output weighs more than a short one.
    """
    window = max(0.0, window_end - window_start)
    measured = [r for r in records if r.start >= window_start]
    ok = [r for r in measured if r.status == "OK"]
    errors = Counter(r.status for r in measured if r.status != "OK")

    def in_window(t: float) -> bool:
        return window_start <= t < window_end

    finished = sum(1 for r in records if r.status == "OK" and in_window(r.end))
    tokens = sum(_tokens_between(r, in_window) for r in records)
    ttft = [1000 * (r.chunk_times[0] - r.start) for r in ok if r.chunk_times]
    itl = [1000 * gap for r in ok for gap in np.diff(r.chunk_times)]
    e2e = [1000 * (r.end - r.start) for r in ok]
    return LoadSummary(
        concurrency=concurrency,
        window_start_s=window_start,
        window_s=window,
        completed=len(ok),
        errors=dict(sorted(errors.items())),
        warmup_requests=len(records) - len(measured),
        requests_per_s=finished / window if window > 0 else None,
        output_tokens_per_s=tokens / window if window > 0 else None,
        ttft_p50_ms=_percentile(ttft, 50),
        ttft_p90_ms=_percentile(ttft, 90),
        ttft_p99_ms=_percentile(ttft, 99),
        itl_p50_ms=_percentile(itl, 50),
        itl_p99_ms=_percentile(itl, 99),
        e2e_p50_ms=_percentile(e2e, 50),
        e2e_p99_ms=_percentile(e2e, 99),
    )


def _tokens_between(record: RequestRecord, inside: Callable[[float], bool]) -> int:
    """Output tokens of `record` whose chunks arrived `inside` the window (counts are cumulative)."""
    previous = [0, *record.chunk_tokens[:-1]]
    return sum(n - p for t, n, p in zip(record.chunk_times, record.chunk_tokens, previous) if inside(t))


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


@dataclass(frozen=True)
class Progress:
    """A running count, reported about once a second while a run goes on."""

    elapsed: float  # seconds since the start
    finished: int  # requests finished, warm-up included
    errors: int  # of those, not OK
    in_flight: int


@dataclass(frozen=True)
class _Call:
    """The arguments of every request of a run."""

    model: str
    max_new_tokens: int | None
    timeout: float | None
    min_new_tokens: int | None = None


class _Dispatcher:
    """Hands out texts round robin until stopped or until `max_requests` have been handed out."""

    def __init__(self, texts: Sequence[str], max_requests: int | None, clock: _Clock) -> None:
        self._texts = texts
        self._max_requests = max_requests
        self._clock = clock
        self._lock = threading.Lock()
        self.issued = 0
        self.stopped_at: float | None = None
        self.stopped = threading.Event()

    def next(self) -> str | None:
        with self._lock:
            if self.stopped.is_set():
                return None
            text = self._texts[self.issued % len(self._texts)]
            self.issued += 1
            if self.issued == self._max_requests:
                self._stop_locked()
            return text

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if not self.stopped.is_set():
            self.stopped_at = self._clock()
            self.stopped.set()


def run_load(
    target: str,
    concurrency: int,
    duration: float,
    *,
    model: str = "",
    max_new_tokens: int | None = None,
    min_new_tokens: int | None = None,
    texts: Sequence[str] | None = None,
    warmup: float = 0.0,
    max_requests: int | None = None,
    timeout: float | None = None,
    drain_timeout: float = 30.0,
    connect_timeout: float = 10.0,
    on_progress: Callable[[Progress], None] | None = None,
    tls: Tls | None = None,
) -> LoadSummary:
    """Runs `concurrency` streaming clients against `target` for `duration` seconds and summarizes.

    Each client loops: the next text (round robin over `texts`, default `DEFAULT_TEXTS`), one
    `translate_stream` call, one record. Sending stops at `duration` seconds or after
    `max_requests` calls in all; requests still in flight `drain_timeout` seconds after that are
    cancelled (recorded as CANCELLED). `min_new_tokens` equal to `max_new_tokens` makes every
    request decode exactly that many tokens. Requests started in the first `warmup` seconds are left out
    of the statistics. `timeout` is each call's deadline. `on_progress` is called about once a
    second. `tls` connects with TLS. Raises SeqcastError(UNAVAILABLE) when a client cannot connect within
    `connect_timeout` seconds, and ValueError for impossible arguments.
    """
    texts = list(DEFAULT_TEXTS if texts is None else texts)
    _check(concurrency, duration, warmup, max_requests, drain_timeout, texts)
    call = _Call(model, max_new_tokens, timeout, min_new_tokens)
    clock = _Clock()
    dispatcher = _Dispatcher(texts, max_requests, clock)
    records: list[RequestRecord] = []  # appended by the workers; list.append is atomic
    # Own connection per client (see the module docstring).
    channels = [open_channel(target, tls, [("grpc.use_local_subchannel_pool", 1)]) for _ in range(concurrency)]
    clients = [SeqcastClient(target, channel=ch) for ch in channels]
    pool = futures.ThreadPoolExecutor(concurrency, thread_name_prefix="loadgen")
    try:
        for client in clients:
            client.wait_ready(connect_timeout)
        clock.start()

        def report(now: float) -> None:
            if on_progress is not None:
                on_progress(_progress(now, dispatcher, records))

        ticker = _Ticker(clock, report)
        workers = [pool.submit(_client_loop, c, dispatcher, call, clock, records) for c in clients]
        # Send until the duration is up or the request budget is spent.
        ticker.wait_until(duration, dispatcher.stopped.wait)
        dispatcher.stop()
        # Let in-flight requests finish, up to the cap; the finally clause cancels the stragglers.
        ticker.wait_until(dispatcher.stopped_at + drain_timeout, lambda t: not futures.wait(workers, t).not_done)
    finally:
        dispatcher.stop()
        for ch in channels:  # closing a channel cancels its calls in flight
            ch.close()
        pool.shutdown(wait=True)
    for w in workers:
        w.result()  # a worker's unexpected exception surfaces here
    return summarize(records, concurrency, warmup, dispatcher.stopped_at)


class _Clock:
    """Seconds since `start()` (`time.perf_counter`); 0 before it."""

    def __init__(self) -> None:
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def __call__(self) -> float:
        return 0.0 if self._t0 is None else time.perf_counter() - self._t0


class _Ticker:
    """Waits in steps that end on whole seconds of the clock, reporting at each."""

    def __init__(self, clock: _Clock, report: Callable[[float], None]) -> None:
        self._clock = clock
        self._report = report
        self._next = 1.0

    def wait_until(self, deadline: float, wait: Callable[[float], bool]) -> None:
        """Calls `wait(seconds)` until it returns True or the clock reaches `deadline`."""
        while (now := self._clock()) < deadline:
            if now >= self._next:
                self._report(now)
                self._next = math.floor(now) + 1.0
            if wait(min(self._next, deadline) - now):
                return


def _progress(now: float, dispatcher: _Dispatcher, records: list[RequestRecord]) -> Progress:
    done = list(records)
    errors = sum(1 for r in done if r.status != "OK")
    return Progress(now, len(done), errors, dispatcher.issued - len(done))


def _check(
    concurrency: int, duration: float, warmup: float, max_requests: int | None, drain_timeout: float,
    texts: Sequence[str],
) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if not duration > 0:
        raise ValueError(f"duration must be positive, got {duration}")
    if not 0 <= warmup < duration:
        raise ValueError(f"warmup must be at least 0 and shorter than the duration ({duration:g} s), got {warmup:g}")
    if max_requests is not None and max_requests < 1:
        raise ValueError(f"max_requests must be at least 1, got {max_requests}")
    if drain_timeout < 0:
        raise ValueError(f"drain_timeout must be at least 0, got {drain_timeout:g}")
    if not texts or not all(texts):
        raise ValueError("texts must be non-empty strings, and at least one")


def _client_loop(
    client: SeqcastClient,
    dispatcher: _Dispatcher,
    call: _Call,
    clock: _Clock,
    records: list[RequestRecord],
) -> None:
    while (text := dispatcher.next()) is not None:
        records.append(_one_request(client, text, call, clock))


def _one_request(client: SeqcastClient, text: str, call: _Call, clock: _Clock) -> RequestRecord:
    times: list[float] = []
    tokens: list[int] = []
    status = "OK"
    start = clock()
    try:
        for chunk in client.translate_stream(text, call.model, call.max_new_tokens, call.timeout,
                                             min_new_tokens=call.min_new_tokens):
            # A chunk may carry neither (the last one can only set finish_reason): not a token.
            if chunk.text or chunk.output_tokens > (tokens[-1] if tokens else 0):
                times.append(clock())
                tokens.append(chunk.output_tokens)
    except SeqcastError as e:
        status = e.code.name
    except ValueError:  # the channel was closed at the drain cap before this call could start
        status = grpc.StatusCode.CANCELLED.name
    return RequestRecord(start, clock(), tuple(times), tuple(tokens), status)
