"""The scheduler driven by a scripted runtime: requests join a running batch, leave it at once,
each row's cache, mask and position stay its own through joins, departures and trims; a burst
is admitted as far as the bounds allow; and a runtime that raises fails only the requests it
touched, after which the gauges are at zero and the next request succeeds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from seqcast.bundle.strategies import BeamSearch, Finish, GreedySequence, token_sequence
from seqcast.server.errors import DeadlineExceeded, EngineFailure, Overloaded
from seqcast.server.scheduler import RequestHandle, Scheduler, SchedulerLimits, Work

from scripted_runtime import BOS, EOS, CountingRuntime


class EventLoop:
    """An asyncio loop in a background thread: the handlers' side of the scheduler."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_readers() -> None:
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        self.run(cancel_readers())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Recorder:
    """One request: its handle, tokens, finish and error; `events` is shared to order requests."""

    def __init__(self, name: str, events: list[tuple[str, object]]) -> None:
        self.name, self.events = name, events
        self.tokens: list[int] = []
        self.finish: Finish | None = None
        self.error: BaseException | None = None
        self.reads = 0
        self.done = threading.Event()
        self.handle: RequestHandle | None = None

    async def read(self, handle: RequestHandle) -> None:
        try:
            async for events in handle.events():
                self.reads += 1
                for _, token, finish in events:
                    if token is not None:
                        self.tokens.append(token)
                        self.events.append((self.name, token))
                    if finish is not None:
                        self.finish = finish
                        self.events.append((self.name, finish))
        except Exception as e:
            self.error = e
        finally:
            self.done.set()


def submit(loop: EventLoop, scheduler: Scheduler, row: int, recorder: Recorder, limit: int = 100,
           deadline: float | None = None, beam: int = 0, stream: bool = True) -> Recorder:
    """Submits a one-text request on the loop and starts reading its events there."""
    strategy = BeamSearch(beam_size=beam) if beam else None
    sequence = token_sequence(strategy, EOS, limit) if beam else GreedySequence(EOS, limit)
    work = Work([sequence], [[row, EOS]], 0, np.array([BOS], dtype=np.int64))

    async def go() -> None:
        recorder.handle = scheduler.submit(work, deadline, stream)
        asyncio.get_running_loop().create_task(recorder.read(recorder.handle))

    loop.run(go())
    return recorder


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


SCRIPTS = {10: list(range(20, 45)), 11: [5, 6], 12: [7, 8, 9, 13]}


@pytest.fixture()
def loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    yield lp
    lp.close()


@pytest.fixture()
def make_scheduler():
    made: list[Scheduler] = []

    def make(batching: str = "inflight", runtime=None, **limits: float) -> tuple[Scheduler, CountingRuntime]:
        runtime = runtime or CountingRuntime(SCRIPTS, step_delay=0.002)
        scheduler = Scheduler("scripted", runtime, SchedulerLimits.defaults(batching=batching, join_wait_s=0.0, **limits))
        made.append(scheduler)
        return scheduler, runtime

    yield make
    for scheduler in made:
        scheduler.close()


def test_a_request_joining_mid_decode_gets_its_first_token_before_the_running_one_finishes(loop, make_scheduler) -> None:
    scheduler, runtime = make_scheduler()
    events: list[tuple[str, object]] = []
    long = submit(loop, scheduler, 10, Recorder("long", events))
    wait_for(lambda: len(long.tokens) >= 3)
    short = submit(loop, scheduler, 11, Recorder("short", events))
    assert short.done.wait(10) and long.done.wait(10)
    assert long.tokens == SCRIPTS[10] and short.tokens == SCRIPTS[11]
    assert long.finish is Finish.EOS and short.finish is Finish.EOS
    order = [name for name, item in events if isinstance(item, Finish)]
    assert order == ["short", "long"]
    first_short = events.index(("short", SCRIPTS[11][0]))
    assert first_short < events.index(("long", Finish.EOS))
    # The short request shared steps with the long one, then left: 1 row, 2 rows, 1 row again.
    rows = [r for r, _ in runtime.steps]
    assert 2 in rows and rows[0] == 1 and rows[-1] == 1


def test_static_batching_makes_a_late_request_wait_for_the_running_batch(loop, make_scheduler) -> None:
    scheduler, runtime = make_scheduler(batching="static")
    events: list[tuple[str, object]] = []
    long = submit(loop, scheduler, 10, Recorder("long", events))
    wait_for(lambda: len(long.tokens) >= 3)
    short = submit(loop, scheduler, 11, Recorder("short", events))
    assert short.done.wait(10) and long.done.wait(10)
    assert events.index(("long", Finish.EOS)) < events.index(("short", SCRIPTS[11][0]))
    assert max(r for r, _ in runtime.steps) == 1


def test_a_cancelled_request_leaves_the_batch_at_the_next_step_and_its_cache_slots_are_dropped(loop, make_scheduler) -> None:
    scheduler, runtime = make_scheduler()
    events: list[tuple[str, object]] = []
    first = submit(loop, scheduler, 10, Recorder("first", events))
    wait_for(lambda: len(first.tokens) >= 5)
    second = submit(loop, scheduler, 12, Recorder("second", events))
    wait_for(lambda: len(second.tokens) >= 1)
    first.handle.cancel()
    assert first.done.wait(10) and second.done.wait(10)
    assert first.finish is Finish.STOPPED and len(first.tokens) < len(SCRIPTS[10]) and first.error is None
    assert second.tokens == SCRIPTS[12]
    # After the first left, the cache holds only the second's own steps: its older slots were trimmed.
    alone = [(rows, past) for rows, past in runtime.steps if rows == 1][-1]
    assert alone[1] <= len(SCRIPTS[12])
    wait_for(lambda: scheduler.inflight == 0 and scheduler.rows == 0)


def test_a_passed_deadline_ends_the_request_with_deadline_exceeded(loop, make_scheduler) -> None:
    scheduler, _ = make_scheduler()
    late = submit(loop, scheduler, 10, Recorder("late", []), deadline=time.monotonic() + 0.02)
    assert late.done.wait(10)
    assert isinstance(late.error, DeadlineExceeded) and len(late.tokens) < len(SCRIPTS[10])
    wait_for(lambda: scheduler.inflight == 0 and scheduler.rows == 0)


def test_many_requests_joining_at_different_steps_each_get_their_own_tokens(loop, make_scheduler) -> None:
    scripts = {r: [3 + (r * 7 + k) % 40 for k in range(2 + r % 9)] for r in range(100, 130)}
    scheduler, runtime = make_scheduler(runtime=CountingRuntime(scripts), max_batch_rows=8)
    events: list[tuple[str, object]] = []
    recorders = {}
    for r in scripts:
        recorders[r] = submit(loop, scheduler, r, Recorder(str(r), events))
        time.sleep(0.0005 * (r % 3))
    for r, recorder in recorders.items():
        assert recorder.done.wait(10)
        assert recorder.tokens == scripts[r] and recorder.finish is Finish.EOS
    assert max(rows for rows, _ in runtime.steps) <= 8


def test_a_reader_that_lags_gets_every_token_in_order_in_one_read(loop, make_scheduler) -> None:
    scheduler, _ = make_scheduler()
    recorder = Recorder("slow", [])
    work = Work([GreedySequence(EOS, 100)], [[10, EOS]], 0, np.array([BOS], dtype=np.int64))

    async def slow() -> None:
        handle = scheduler.submit(work, None, stream=True)
        # The reader lags the whole request: its 25 tokens and end-of-sequence take 26 steps.
        while scheduler.timings.steps < len(SCRIPTS[10]) + 1 or scheduler.inflight:
            await asyncio.sleep(0.01)
        async for events in handle.events():
            recorder.reads += 1
            recorder.tokens.extend(t for _, t, _ in events if t is not None)

    loop.run(slow())
    assert recorder.tokens == SCRIPTS[10]
    assert recorder.reads == 1


def test_a_unary_request_is_woken_once_when_it_ends_while_a_stream_beside_it_reads_as_it_decodes(loop, make_scheduler) -> None:
    scheduler, _ = make_scheduler()
    events: list[tuple[str, object]] = []
    unary = submit(loop, scheduler, 10, Recorder("unary", events), stream=False)
    streamed = submit(loop, scheduler, 12, Recorder("streamed", events))
    assert unary.done.wait(10) and streamed.done.wait(10)
    assert unary.tokens == SCRIPTS[10] and unary.finish is Finish.EOS
    assert streamed.tokens == SCRIPTS[12] and streamed.finish is Finish.EOS
    assert unary.reads == 1 and streamed.reads > 1


def test_a_unary_request_past_its_deadline_is_woken_with_deadline_exceeded(loop, make_scheduler) -> None:
    scheduler, _ = make_scheduler()
    late = submit(loop, scheduler, 10, Recorder("late", []), deadline=time.monotonic() + 0.01, stream=False)
    assert late.done.wait(10)
    assert isinstance(late.error, DeadlineExceeded) and late.reads <= 1  # its tokens and the error, together


def test_the_queue_bound_refuses_at_once(loop, make_scheduler) -> None:
    scheduler, _ = make_scheduler(max_queued_requests=1)
    scheduler.hold()
    events: list[tuple[str, object]] = []
    waiting = submit(loop, scheduler, 11, Recorder("waiting", events))
    with pytest.raises(Overloaded, match="1 requests waiting"):
        submit(loop, scheduler, 12, Recorder("refused", events))
    scheduler.release()
    assert waiting.done.wait(10) and waiting.tokens == SCRIPTS[11]


def test_a_burst_is_admitted_as_far_as_the_rows_allow_and_only_the_rest_counts_against_the_queue(loop, make_scheduler) -> None:
    scripts = {r: [5] * 30 for r in range(300)}
    runtime = CountingRuntime(scripts, step_delay=0.005)
    scheduler, _ = make_scheduler(runtime=runtime, max_batch_rows=256, max_queued_requests=16)
    recorders, refused = [], 0

    async def burst() -> None:  # all 300 arrive before the decoding thread's first step ends
        nonlocal refused
        for r in range(300):
            recorder = Recorder(str(r), [])
            work = Work([GreedySequence(EOS, 100)], [[r, EOS]], 0, np.array([BOS], dtype=np.int64))
            try:
                handle = scheduler.submit(work, None, stream=True)
            except Overloaded:
                refused += 1
                continue
            recorders.append(recorder)
            asyncio.get_running_loop().create_task(recorder.read(handle))

    loop.run(burst())
    # 256 fit in the batch and 16 may wait: the rest, and only the rest, are refused.
    assert (len(recorders), refused) == (272, 28)
    for recorder in recorders:
        assert recorder.done.wait(20) and recorder.tokens == [5] * 30
    assert max(rows for rows, _ in runtime.steps) == 256


def test_with_many_requests_decoding_arrivals_gather_and_join_together(loop, make_scheduler) -> None:
    # A wait far longer than the test: only the count rule (a quarter of the running requests) lets them in.
    scheduler, runtime = make_scheduler()
    scheduler.limits = SchedulerLimits.defaults(join_wait_s=60.0)
    events: list[tuple[str, object]] = []
    scheduler.hold()
    running = [submit(loop, scheduler, 10, Recorder(f"running{i}", events)) for i in range(8)]
    scheduler.release()
    wait_for(lambda: len(running[0].tokens) >= 3)
    first = submit(loop, scheduler, 11, Recorder("first", events))
    steps = len(runtime.steps)
    wait_for(lambda: len(runtime.steps) >= steps + 3)
    assert first.tokens == [], "one arrival joined 8 running requests without waiting for company"
    second = submit(loop, scheduler, 12, Recorder("second", events))  # two waiting: a quarter of eight
    assert first.done.wait(10) and second.done.wait(10)
    assert (first.tokens, second.tokens) == (SCRIPTS[11], SCRIPTS[12])
    # They joined at the same step, and long before the running requests finished.
    joined = [rows for rows, _ in runtime.steps if rows == 10]
    assert joined, "the two arrivals never decoded in one step with the eight running requests"
    for recorder in running:
        assert recorder.done.wait(10) and recorder.tokens == SCRIPTS[10]
    assert events.index(("first", Finish.EOS)) < events.index(("running0", Finish.EOS))


# --- failure injection ------------------------------------------------------------------------


class FailingRuntime(CountingRuntime):
    """Raises in `encode` for sources starting with `bad_row`, or in the step numbered `fail_step`."""

    def __init__(self, scripts, bad_row: int | None = None, fail_step: int | None = None, step_delay: float = 0.002,
                 check_feeds: bool = True) -> None:
        super().__init__(scripts, step_delay=step_delay, check_feeds=check_feeds)
        self.bad_row, self.fail_step = bad_row, fail_step

    def encode(self, source, attention_mask):
        if self.bad_row is not None and self.bad_row in source[:, 0]:
            raise RuntimeError("injected encoder failure")
        return super().encode(source, attention_mask)

    def step(self, feeds):
        if self.fail_step is not None and len(self.steps) == self.fail_step:
            self.steps.append((-1, -1))
            raise RuntimeError("injected step failure")
        return super().step(feeds)


def _settled(scheduler: Scheduler) -> None:
    wait_for(lambda: scheduler.inflight == 0 and scheduler.queued == 0 and scheduler.rows == 0)


def test_a_failing_encode_fails_only_its_arrivals_and_the_running_request_goes_on(loop, make_scheduler, caplog) -> None:
    scripts = {**SCRIPTS, 99: [4, 4]}
    scheduler, _ = make_scheduler(runtime=FailingRuntime(scripts, bad_row=99))
    running = submit(loop, scheduler, 10, Recorder("running", []))
    wait_for(lambda: len(running.tokens) >= 3)
    arrival = submit(loop, scheduler, 99, Recorder("arrival", []))
    assert arrival.done.wait(10)
    assert isinstance(arrival.error, EngineFailure) and "failed to encode" in str(arrival.error)
    assert running.done.wait(10) and running.error is None and running.tokens == SCRIPTS[10]
    assert "injected encoder failure" in caplog.text  # the traceback is logged
    _settled(scheduler)
    after = submit(loop, scheduler, 12, Recorder("after", []))
    assert after.done.wait(10) and after.tokens == SCRIPTS[12]


@pytest.mark.parametrize("fail_step", [0, 5], ids=["first-step", "mid-decode"])
def test_a_failing_step_fails_the_rows_of_that_step_and_the_engine_recovers(loop, make_scheduler, fail_step) -> None:
    scheduler, runtime = make_scheduler(runtime=FailingRuntime(SCRIPTS, fail_step=fail_step))
    scheduler.hold()
    victims = [submit(loop, scheduler, 10, Recorder(str(i), [])) for i in range(2)]
    scheduler.release()
    for victim in victims:
        assert victim.done.wait(10)
        assert isinstance(victim.error, EngineFailure) and "failed while decoding" in str(victim.error)
    _settled(scheduler)
    after = submit(loop, scheduler, 11, Recorder("after", []))
    assert after.done.wait(10) and after.error is None and after.tokens == SCRIPTS[11]


def test_a_step_failing_during_a_beam_reorder_fails_the_batch_and_the_engine_recovers(loop, make_scheduler) -> None:
    # Step 2 is the beam's second expansion: its rows are reordered from their parents there.
    runtime = FailingRuntime(SCRIPTS, fail_step=2, check_feeds=False)
    scheduler, _ = make_scheduler(runtime=runtime)
    beam = submit(loop, scheduler, 10, Recorder("beam", []), beam=3)
    assert beam.done.wait(10) and isinstance(beam.error, EngineFailure)
    assert [rows for rows, _ in runtime.steps[:3]] == [3, 3, -1], "the failure hit the step after the first reorder"
    _settled(scheduler)
    again = submit(loop, scheduler, 12, Recorder("again", []), beam=3)
    assert again.done.wait(10) and again.error is None
    assert again.tokens and again.finish in (Finish.EOS, Finish.LENGTH)


def test_a_batch_holding_more_state_than_the_bound_takes_no_arrival_until_rows_leave(loop, make_scheduler) -> None:
    # The scripted cache holds 4 bytes per slot and row: after a few steps the long request alone
    # holds more than 40 bytes of state, so the arrival waits until it has left.
    runtime = CountingRuntime({10: list(range(20, 45)), 11: [5, 6]}, step_delay=0.002)
    scheduler, _ = make_scheduler(runtime=runtime, max_state_bytes=40)
    events: list[tuple[str, object]] = []
    long = submit(loop, scheduler, 10, Recorder("long", events))
    wait_for(lambda: len(long.tokens) >= 12)
    late = submit(loop, scheduler, 11, Recorder("late", events))
    assert late.done.wait(10) and long.done.wait(10)
    assert late.tokens == [5, 6] and long.tokens == list(range(20, 45))
    assert events.index(("late", 5)) > events.index(("long", Finish.EOS))
    assert max(rows for rows, _ in runtime.steps) == 1
