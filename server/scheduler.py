"""One scheduler per model: admission, in-flight batching, and the decoding thread.

Builds on `seqcast.bundle.decoding` (the decode loop's body: join, step, stop) and hands what
each step produced to the request's event loop through the request's own handle.

A request enters with `submit`, which returns its `RequestHandle`. It is admitted at once when
its rows fit beside the running batch and the requests already ahead of it (up to
`max_batch_rows` rows and `max_state_bytes` of decoder state); otherwise it waits in the queue,
and past `max_queued_requests` such waiting requests it is refused with `Overloaded`. So a
burst is admitted as far as the batch can take it, and the queue bound counts only what cannot
be taken now.

The decoding thread loops (`_loop`): take arrivals, end the requests whose caller gave up or
whose deadline passed, encode the arrivals and merge them into the running batch, run one
decoder step for every row, and deliver the step's events. Failures stay where they happen:
an encoder call that raises fails only the arrivals it was encoding; a step that raises fails
the rows of that step, and the next request starts on a fresh batch.

Events (a token or forecast step, a finish, the end or an error) cross from the decoding thread
to the event loop in one way only: each handle collects its events under its lock, and after
every step the thread sends each event loop one wake-up for all its handles that received
something (`loop.call_soon_threadsafe` is a system call; one per token would cost a write per
row per step). A reader that lags gets everything that accumulated in one read. A request
submitted with `stream=False` (a unary call, which answers only once it has everything) is
woken once, when it ends, instead of at every step: its events wait in the handle meanwhile, and
the event loop does no work for it while it decodes.

`batching` picks the policy, for comparison in benchmarks:
  * "inflight": requests join the running batch at any step (the default); with five or more
    requests running, arrivals gather for up to `join_wait_s` so that several join together;
  * "static": requests join only when the batch is empty, then run to completion together;
  * "none": one request at a time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from seqcast.bundle.decoding import Decoder, Runtime, StepTimings
from seqcast.bundle.strategies import Finish
from seqcast.bundle.strategies import Sequence as DecodingSequence
from seqcast.server import metrics
from seqcast.server.errors import DeadlineExceeded, EngineFailure, Overloaded
from seqcast.server.settings import ServerSettings

log = logging.getLogger(__name__)

Batching = Literal["inflight", "static", "none"]


@dataclass(frozen=True)
class SchedulerLimits:
    """Bounds and policy of one model's scheduler; `from_settings` is the only way the server
    builds one, so every default lives in `ServerSettings`."""

    max_queued_requests: int
    # Rows decoded together (a text is one row, or beam_size rows).
    max_batch_rows: int
    # Decoder state (caches, encoder outputs) above which no new request joins until rows leave.
    max_state_bytes: int
    batching: Batching
    # In-flight batching: while five or more requests decode, arrivals join once they number a
    # quarter of the running requests or the first of them has waited this long, so that several
    # share one encoder call and one merge of the caches (each merge copies the whole batch's state).
    join_wait_s: float

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> "SchedulerLimits":
        return cls(
            max_queued_requests=settings.max_queued_requests,
            max_batch_rows=settings.max_batch_rows,
            max_state_bytes=settings.max_state_mb * 1024 * 1024,
            batching=settings.batching,
            join_wait_s=settings.join_wait_ms / 1000,
        )

    @classmethod
    def defaults(cls, **changes: Any) -> "SchedulerLimits":
        """The settings' defaults, with `changes` (for tests and offline tools)."""
        fields = ServerSettings.model_fields
        limits = cls(
            max_queued_requests=fields["max_queued_requests"].default,
            max_batch_rows=fields["max_batch_rows"].default,
            max_state_bytes=fields["max_state_mb"].default * 1024 * 1024,
            batching=fields["batching"].default,
            join_wait_s=fields["join_wait_ms"].default / 1000,
        )
        return cls(**{**limits.__dict__, **changes})


@dataclass(frozen=True)
class Work:
    """What a request decodes: one sequence per source, built by the task layer."""

    sequences: list[DecodingSequence]
    # Token ids (end-of-sequence included) or scaled values, one per sequence.
    sources: Sequence[Sequence[int] | np.ndarray]
    # The source padding value, and each sequence's first decoder input (bos, or the last value).
    pad: float
    first_feed: np.ndarray

    @property
    def rows(self) -> int:
        return sum(s.width for s in self.sequences)


# One thing a sequence produced: (index of the sequence in its request, item, finish). The item
# is a token id or a forecast step's columns, None when only the finish is news.
Event = tuple[int, Any, Finish | None]


class RequestHandle:
    """One request from admission to its end, shared by its handler and the decoding thread.

    The decoding thread appends events and finally ends the handle (with an error if decoding
    failed); the handler reads them with `events()` on its event loop, and calls `cancel` when
    its caller goes away.
    """

    def __init__(self, work: Work, deadline: float | None, stream: bool, loop: asyncio.AbstractEventLoop,
                 scheduler: "Scheduler") -> None:
        self.work = work
        # Absolute time.monotonic() after which decoding stops; None: no deadline.
        self.deadline = deadline
        # Whether the reader is woken at every step that gave it events, or only at the end.
        self.stream = stream
        self.loop = loop
        self.rows = work.rows
        self._scheduler = scheduler
        # Written by the decoding thread only: events of the current step, not yet delivered.
        self._pending: list[Event] = []
        self._ending: BaseException | None | bool = False  # False: going on; None: ended well
        # Shared, under _lock: delivered events the handler has not read yet, and the end.
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._ended = False
        self._error: BaseException | None = None
        self._signalled = False
        self._ready = asyncio.Event()
        self.cancelled = False
        # Timing, on the decoding thread: admission, joining, and the last output (for time to
        # first token and inter-token latency).
        self.admitted = time.monotonic()
        self.joined: float | None = None
        self.last_output: float | None = None

    # --- the handler's side ---------------------------------------------------------------------

    async def events(self) -> AsyncIterator[list[Event]]:
        """Every event of the request, in order, in lists of what arrived since the last read.

        Ends when the request ended; raises the domain error if it failed. Leaving early (the
        caller went away, or stopped reading) cancels the request.
        """
        ended = False
        try:
            while True:
                await self._ready.wait()
                with self._lock:
                    events, self._events = self._events, []
                    ended, error = self._ended, self._error
                    self._signalled = False
                    self._ready.clear()
                if events:
                    yield events
                if ended:
                    if error is not None:
                        raise error
                    return
        finally:
            if not ended:
                self.cancel()

    def cancel(self) -> None:
        """Ends the request at the decoding thread's next step and frees its rows (nothing to do
        once it ended)."""
        if self._ended:
            return
        self.cancelled = True
        self._scheduler._wake()

    # --- the decoding thread's side ----------------------------------------------------------------

    def emit(self, index: int, item: Any, finish: Finish | None) -> None:
        if not self._pending:
            self._scheduler._touched.append(self)
        self._pending.append((index, item, finish))

    def end(self, error: BaseException | None = None) -> None:
        """Ends the request (with `error` if it failed); delivered with this step's events."""
        if self._ending is False:
            if not self._pending:
                self._scheduler._touched.append(self)
            self._ending = error

    def _deliver(self) -> bool:
        """Hands the step's events to the handler; True if its event loop needs a wake-up."""
        events, self._pending = self._pending, []
        with self._lock:
            self._events.extend(events)
            if self._ending is not False:
                self._ended, self._error = True, self._ending
            wake = not self._signalled and (self.stream or self._ended)
            self._signalled = self._signalled or wake
        return wake

    @property
    def should_stop(self) -> bool:
        return self.cancelled or (self.deadline is not None and time.monotonic() > self.deadline)


def _wake(handles: list[RequestHandle]) -> None:
    for handle in handles:
        handle._ready.set()


class Scheduler:
    def __init__(self, name: str, runtime: Runtime, limits: SchedulerLimits) -> None:
        self.name = name
        self.runtime = runtime
        self.limits = limits
        self.timings = StepTimings(history=False)
        self._decoder = Decoder(runtime, self.timings)
        self._queue: deque[RequestHandle] = deque()
        self._running: list[RequestHandle] = []
        # Handles that received events or ended during the current iteration of the loop.
        self._touched: list[RequestHandle] = []
        # Rows and state bytes of the running batch, as of the end of the last step.
        self._rows = 0
        self._state_bytes = 0
        self._metrics = metrics.DecodeMetrics(name)
        self._cond = threading.Condition()
        self._held = False
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=f"decode-{name}", daemon=True)
        self._thread.start()

    # --- called from request handlers ---------------------------------------------------------

    def submit(self, work: Work, deadline: float | None, stream: bool) -> RequestHandle:
        """Admits a request, or raises Overloaded at once; read its events from the handle.

        Call from the event loop that reads the handle. With `stream`, the reader is woken after
        every step that gave it events; without, once, when the request ended. The task layer
        has checked that the request's rows fit in `max_batch_rows`.
        """
        handle = RequestHandle(work, deadline, stream, asyncio.get_running_loop(), self)
        for i, seq in enumerate(work.sequences):
            seq.emit = _Emitter(handle, i)
        with self._cond:
            if self._closing:
                raise Overloaded(f"model {self.name} is shutting down; retry on another replica")
            waiting = self._waiting(extra_rows=handle.rows)
            if waiting > self.limits.max_queued_requests:
                raise Overloaded(
                    f"model {self.name} has {waiting - 1} requests waiting (limit "
                    f"{self.limits.max_queued_requests}); retry with backoff"
                )
            self._queue.append(handle)
            self._cond.notify()
            self._metrics.requests(len(self._queue), len(self._running))
        return handle

    def _waiting(self, extra_rows: int = 0) -> int:
        """Queued requests (and one more of `extra_rows`) that the batch can't take now."""
        rows = [h.rows for h in self._queue] + ([extra_rows] if extra_rows else [])
        if self._held or self._state_bytes > self.limits.max_state_bytes:
            return len(rows)
        policy = self.limits.batching
        if policy != "inflight" and self._running:
            return len(rows)
        fit, used = 0, self._rows
        for r in rows:
            if used + r > self.limits.max_batch_rows or (policy == "none" and fit == 1):
                break
            used += r
            fit += 1
        return len(rows) - fit

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return len(self._running)

    @property
    def rows(self) -> int:
        return self._rows

    def hold(self) -> None:
        """Stops taking queued requests into the batch (running ones go on); `release` resumes."""
        with self._cond:
            self._held = True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify()

    def close(self) -> None:
        """Stops the decoding thread once the running and queued requests are done."""
        with self._cond:
            self._closing = True
            self._held = False
            self._cond.notify()
        self._thread.join()
        self._metrics.close()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # --- the decoding thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._work_ready():
                    if self._closing and not self._queue and not self._running:
                        return
                    self._cond.wait()
                arrivals = self._take_arrivals()
            arrivals = self._end_abandoned(arrivals)
            if arrivals:
                self._join(arrivals)
            if self._decoder.active:
                self._step()
            self._finish_done()
            self._deliver()
            with self._cond:
                self._rows = self._decoder.rows
                self._state_bytes = self._decoder.state_bytes
                # Under the lock that guards the queue, so the gauges show the latest counts.
                self._metrics.requests(len(self._queue), len(self._running))

    def _work_ready(self) -> bool:
        return bool(self._running) or (bool(self._queue) and not self._held) or any(h.cancelled for h in self._queue)

    def _take_arrivals(self) -> list[RequestHandle]:
        """Queued requests that join now, per the batching policy and the bounds; and queued
        requests whose caller gave up (ended without joining)."""
        gone = [h for h in self._queue if h.should_stop]
        for handle in gone:
            self._queue.remove(handle)
        if self._held or not self._queue:
            return gone
        policy = self.limits.batching
        if policy != "inflight" and self._running:
            return gone
        if (self._running and 4 * len(self._queue) < len(self._running)
                and time.monotonic() - self._queue[0].admitted < self.limits.join_wait_s):
            return gone  # a few more arrivals will share the encoder call and the merge
        rows, taken = self._rows, []
        while self._queue:
            handle = self._queue[0]
            if (rows or taken) and (rows + handle.rows > self.limits.max_batch_rows
                                    or self._state_bytes > self.limits.max_state_bytes):
                break
            taken.append(self._queue.popleft())
            rows += handle.rows
            if policy == "none":
                break
        self._rows = rows  # counted from now on, so that admission sees them before they join
        return gone + taken

    def _end_abandoned(self, arrivals: list[RequestHandle]) -> list[RequestHandle]:
        """Ends requests whose caller gave up or whose deadline passed: arrivals before they join,
        running ones now; returns the arrivals that go on."""
        going = []
        for handle in arrivals:
            if handle.should_stop:
                for seq in handle.work.sequences:
                    seq.stop()
                self._end_stopped(handle)
            else:
                going.append(handle)
        stopping = [h for h in self._running if h.should_stop]
        if stopping:
            self._decoder.stop([s for h in stopping for s in h.work.sequences])
            for handle in stopping:
                self._running.remove(handle)
                self._end_stopped(handle)
        return going

    def _end_stopped(self, handle: RequestHandle) -> None:
        if handle.cancelled:
            handle.end()
        else:
            handle.end(DeadlineExceeded("the deadline passed before decoding finished"))

    def _join(self, arrivals: list[RequestHandle]) -> None:
        """Encodes the arrivals together and adds their rows to the batch; if the encoder (or the
        merge) raises, only these arrivals fail and the running batch goes on."""
        sequences = [s for h in arrivals for s in h.work.sequences]
        sources = [src for h in arrivals for src in h.work.sources]
        first = np.concatenate([h.work.first_feed for h in arrivals])
        encoder_s = self.timings.encoder_s
        try:
            self._decoder.join(sequences, sources, arrivals[0].work.pad, first)
        except Exception:
            log.exception("model %s: encoding %d arriving requests failed; they are answered with an error", self.name, len(arrivals))
            for handle in arrivals:
                handle.end(EngineFailure(f"model {self.name} failed to encode the request; the server log has the details"))
            return
        now = time.monotonic()
        self._metrics.joined(self.timings.encoder_s - encoder_s, sum(len(s) for s in sources), [now - h.admitted for h in arrivals])
        for handle in arrivals:
            handle.joined = now
        self._running.extend(arrivals)
        # Before the first step: the gauges count a request before it produces anything.
        with self._cond:
            self._metrics.requests(len(self._queue), len(self._running))

    def _step(self) -> None:
        """One decoder step; if it raises, every request in the batch fails and the batch restarts empty."""
        rows = self._decoder.rows
        try:
            self._decoder.step()
        except Exception:
            log.exception("model %s: a decoder step over %d rows failed; its %d requests are answered with an error",
                          self.name, rows, len(self._running))
            failed, self._running = self._running, []
            self._decoder = Decoder(self.runtime, self.timings)
            for handle in failed:
                handle.end(EngineFailure(f"model {self.name} failed while decoding the request; the server log has the details"))
            return
        self._metrics.step(rows, self.timings.last_step_s)

    def _finish_done(self) -> None:
        if any(h._pending and h._pending[-1][2] is not None for h in self._touched):
            done = [h for h in self._running if all(s.finished for s in h.work.sequences)]
            for handle in done:
                self._running.remove(handle)
                handle.end()

    def _deliver(self) -> None:
        """Hands every touched handle its events; one wake-up per event loop; token metrics."""
        touched, self._touched = self._touched, []
        if not touched:
            return
        now = time.monotonic()
        produced, first, gaps, wake = 0, [], [], {}
        for handle in touched:
            produced += sum(1 for _, item, _ in handle._pending if item is not None)
            if handle.joined is not None and handle._pending:
                if handle.last_output is None:
                    first.append(now - handle.admitted)
                else:
                    gaps.append(now - handle.last_output)
                handle.last_output = now
            if handle._deliver():
                wake.setdefault(handle.loop, []).append(handle)
        self._metrics.delivered(produced, first, gaps)
        for loop, handles in wake.items():
            try:
                loop.call_soon_threadsafe(_wake, handles)
            except RuntimeError:  # the loop is closed: nobody reads these handles any more
                pass


class _Emitter:
    """A sequence's emit callback: its events go to its request's handle, tagged with its index."""

    __slots__ = ("handle", "index")

    def __init__(self, handle: RequestHandle, index: int) -> None:
        self.handle, self.index = handle, index

    def __call__(self, item: Any, finish: Finish | None) -> None:
        self.handle.emit(self.index, item, finish)
