"""One scheduler per model: admission queue, in-flight batching, and the decoding thread.

Requests are admitted into a bounded queue (past `max_queued_requests` a request is refused at
once with RESOURCE_EXHAUSTED). The decoding thread loops: it takes waiting requests into the
running batch (their sources encoded together, first come first served, while rows in flight
and the decoder's state memory are under their bounds), checks every request's deadline and
cancellation, and runs one decoder step for all rows. A request joins at the next step and its
rows leave the step they finish, so a short request never waits for a long one.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from seqcast.server import metrics, wakeups
from seqcast.server.decoding import Decoder, Runtime, StepTimings, nbytes
from seqcast.server.errors import DeadlineExceeded, InvalidArgument, Overloaded
from seqcast.server.strategies import Sequence as DecodingSequence

log = logging.getLogger(__name__)

Batching = Literal["inflight", "static", "none"]


@dataclass(frozen=True)
class SchedulerLimits:
    max_queued_requests: int = 64
    # Rows decoded together (a text is one row, or beam_size rows).
    max_batch_rows: int = 256
    # Decoder state (caches, encoder outputs) above which no new request joins until rows leave.
    max_state_bytes: int = 512 * 1024 * 1024
    batching: Batching = "inflight"
    # In-flight batching: while a batch decodes, arrivals join once they number a quarter of the
    # running requests or the first of them has waited this long, so that several share one
    # encoder call and one merge of the caches (each merge copies the whole batch's state).
    join_wait_s: float = 0.0


@dataclass
class Job:
    """One request's sequences, their encoder inputs, and how the scheduler reports back."""

    sequences: list[DecodingSequence]
    sources: Sequence[Sequence[int] | np.ndarray]
    pad: float
    first_feed: np.ndarray
    # True once the caller gave up (deadline passed, cancelled); checked before every step.
    should_stop: Callable[[], bool]
    # Called once on the decoding thread when every sequence ended; with the error if decoding failed.
    on_done: Callable[[BaseException | None], None]
    admitted: float = field(default_factory=time.monotonic)
    joined: float | None = None
    # When the request last produced (a token, a forecast step): for time to first token and
    # inter-token latency.
    last_output: float | None = None

    @property
    def rows(self) -> int:
        return sum(s.width for s in self.sequences)


class Scheduler:
    def __init__(self, name: str, runtime: Runtime, limits: SchedulerLimits) -> None:
        self.name = name
        self.runtime = runtime
        self.limits = limits
        self.timings = StepTimings(history=False)
        self._decoder = Decoder(runtime, self.timings)
        self._queue: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._held = False
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=f"decode-{name}", daemon=True)
        self._thread.start()

    # --- called from request handlers ---------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queues the job; raises Overloaded at once when the queue is full."""
        if job.rows > self.limits.max_batch_rows:
            raise InvalidArgument(
                f"the request needs {job.rows} decoding rows; model {self.name} decodes at most "
                f"{self.limits.max_batch_rows} at once: send fewer texts or a smaller beam"
            )
        with self._cond:
            if self._closing:
                raise Overloaded(f"model {self.name} is shutting down; retry on another replica")
            if len(self._queue) >= self.limits.max_queued_requests:
                raise Overloaded(
                    f"model {self.name} has {len(self._queue)} requests waiting (limit "
                    f"{self.limits.max_queued_requests}); retry with backoff"
                )
            self._queue.append(job)
            self._cond.notify()
        metrics.set_requests(self.name, len(self._queue), len(self._running))

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return len(self._running)

    @property
    def rows(self) -> int:
        return self._decoder.rows

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

    # --- the decoding thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._work_ready():
                    if self._closing and not self._queue and not self._running:
                        return
                    self._cond.wait()
                arrivals = self._take_arrivals()
            # The step's tokens and completions reach each event loop as one wake-up.
            with wakeups.batched():
                try:
                    self._stop_abandoned(arrivals)
                    if arrivals:
                        self._join(arrivals)
                    if self._decoder.active:
                        self._step()
                    self._finish_done()
                except Exception as e:  # a runtime failure: fail the requests in the batch, keep serving
                    log.exception("decoding failed for model %s", self.name)
                    self._fail_running(e)
            metrics.set_requests(self.name, len(self._queue), len(self._running))

    def _work_ready(self) -> bool:
        return bool(self._running) or (bool(self._queue) and not self._held)

    def _take_arrivals(self) -> list[Job]:
        """Queued jobs that join now, per the batching policy and the bounds."""
        if self._held or not self._queue:
            return []
        policy = self.limits.batching
        if policy != "inflight" and self._running:
            return []
        if (self._running and 4 * len(self._queue) < len(self._running)
                and time.monotonic() - self._queue[0].admitted < self.limits.join_wait_s):
            return []  # a few more arrivals will share the encoder call and the merge
        rows, taken = self._decoder.rows, []
        state = self._state_bytes()
        while self._queue:
            job = self._queue[0]
            if job.should_stop():
                taken.append(self._queue.popleft())  # ended below without joining
                continue
            if (rows or taken) and (rows + job.rows > self.limits.max_batch_rows or state > self.limits.max_state_bytes):
                break
            taken.append(self._queue.popleft())
            rows += job.rows
            if policy == "none":
                break
        return taken

    def _state_bytes(self) -> int:
        batch = self._decoder.batch
        if batch is None:
            return 0
        return sum(nbytes(v) for v in [*batch.state.values(), *batch.static.values()])

    def _stop_abandoned(self, arrivals: list[Job]) -> None:
        """Ends requests whose caller gave up: queued ones before they join, running ones now."""
        for job in [j for j in arrivals if j.should_stop()]:
            arrivals.remove(job)
            for seq in job.sequences:
                seq.stop()
            job.on_done(None)
        for job in [j for j in self._running if j.should_stop()]:
            self._decoder.stop(job.sequences)
            self._running.remove(job)
            job.on_done(None)

    def _join(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        sequences = [s for j in jobs for s in j.sequences]
        sources = [src for j in jobs for src in j.sources]
        first = np.concatenate([j.first_feed for j in jobs])
        encoder_s = self.timings.encoder_s
        self._decoder.join(sequences, sources, jobs[0].pad, first)
        metrics.observe_encoder(self.name, self.timings.encoder_s - encoder_s)
        metrics.count_tokens(self.name, input_tokens=sum(len(s) for s in sources))
        for job in jobs:
            job.joined = now
            metrics.observe_queue(self.name, now - job.admitted)
        self._running.extend(jobs)
        # Before the first step: the gauges count a request before it produces anything.
        metrics.set_requests(self.name, len(self._queue), len(self._running))

    def _step(self) -> None:
        rows = self._decoder.rows
        produced = {id(s): s.generated for s in self._decoder.active}
        self._decoder.step()
        now = time.monotonic()
        metrics.observe_decoder_step(self.name, rows, self.timings.last_step_s)
        metrics.count_tokens(self.name, output_tokens=len(produced))
        gaps = []
        for job in self._running:
            if not any(id(s) in produced for s in job.sequences):
                continue
            if job.last_output is None:
                metrics.observe_first_token(self.name, now - job.admitted)
            else:
                gaps.append(now - job.last_output)
            job.last_output = now
        metrics.observe_inter_token(self.name, gaps)

    def _finish_done(self) -> None:
        for job in [j for j in self._running if all(s.finished for s in j.sequences)]:
            self._running.remove(job)
            job.on_done(None)

    def _fail_running(self, error: BaseException) -> None:
        running, self._running = self._running, []
        self._decoder = Decoder(self.runtime, self.timings)
        for job in running:
            job.on_done(error)


async def run_job(
    scheduler: Scheduler,
    sequences: list[DecodingSequence],
    sources: Sequence[Sequence[int] | np.ndarray],
    pad: float,
    first_feed: np.ndarray,
    deadline: float | None,
    stop: threading.Event,
    too_slow: str,
) -> None:
    """Submits one request's sequences and waits until all ended; maps a passed deadline.

    `deadline` is an absolute time.monotonic() (None: none); `stop` set (the caller went away)
    ends the request at the next step. `too_slow` tells the caller what to change when the
    deadline passes.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[BaseException | None] = loop.create_future()

    def should_stop() -> bool:
        return stop.is_set() or (deadline is not None and time.monotonic() > deadline)

    def on_done(error: BaseException | None) -> None:
        wakeups.call_soon(loop, lambda: done.done() or done.set_result(error))

    scheduler.submit(Job(sequences, sources, pad, first_feed, should_stop, on_done))
    try:
        error = await done
    finally:
        if not done.done():  # the handler was cancelled: the scheduler drops the rows at the next step
            stop.set()
    if error is not None:
        raise error
    if deadline is not None and time.monotonic() > deadline and not stop.is_set():
        raise DeadlineExceeded(f"the deadline passed before decoding finished; {too_slow}")
