"""The scheduler driven by a scripted runtime: requests join a running batch, leave it at once,
and each row's cache, mask and position stay its own through joins, departures and trims."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from seqcast.server.errors import Overloaded
from seqcast.server.scheduler import Job, Scheduler, SchedulerLimits
from seqcast.server.strategies import Finish, GreedySequence

from scripted_runtime import BOS, EOS, CountingRuntime

class Recorder:
    """Collects one request's tokens and finish; `events` is shared to order requests."""

    def __init__(self, name: str, events: list[tuple[str, object]]) -> None:
        self.name, self.events = name, events
        self.tokens: list[int] = []
        self.finish: Finish | None = None
        self.done = threading.Event()

    def emit(self, token: int | None, finish: Finish | None) -> None:
        if token is not None:
            self.tokens.append(token)
            self.events.append((self.name, token))
        if finish is not None:
            self.finish = finish
            self.events.append((self.name, finish))


def submit(scheduler: Scheduler, row: int, recorder: Recorder, limit: int = 100, stop: threading.Event | None = None) -> Job:
    stop = stop or threading.Event()
    job = Job(
        sequences=[GreedySequence(EOS, limit, recorder.emit)],
        sources=[[row, EOS]],
        pad=0,
        first_feed=np.array([BOS], dtype=np.int64),
        should_stop=stop.is_set,
        on_done=lambda error: recorder.done.set(),
    )
    scheduler.submit(job)
    return job


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


SCRIPTS = {10: list(range(20, 45)), 11: [5, 6], 12: [7, 8, 9, 13]}


@pytest.fixture()
def make_scheduler():
    made: list[Scheduler] = []

    def make(batching: str = "inflight", **limits: float) -> tuple[Scheduler, CountingRuntime]:
        runtime = CountingRuntime(SCRIPTS, step_delay=0.002)
        scheduler = Scheduler("scripted", runtime, SchedulerLimits(batching=batching, **limits))
        made.append(scheduler)
        return scheduler, runtime

    yield make
    for scheduler in made:
        scheduler.close()


def test_a_request_joining_mid_decode_gets_its_first_token_before_the_running_one_finishes(make_scheduler) -> None:
    scheduler, runtime = make_scheduler()
    events: list[tuple[str, object]] = []
    long, short = Recorder("long", events), Recorder("short", events)
    submit(scheduler, 10, long)
    wait_for(lambda: len(long.tokens) >= 3)
    submit(scheduler, 11, short)
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


def test_static_batching_makes_a_late_request_wait_for_the_running_batch(make_scheduler) -> None:
    scheduler, runtime = make_scheduler(batching="static")
    events: list[tuple[str, object]] = []
    long, short = Recorder("long", events), Recorder("short", events)
    submit(scheduler, 10, long)
    wait_for(lambda: len(long.tokens) >= 3)
    submit(scheduler, 11, short)
    assert short.done.wait(10) and long.done.wait(10)
    assert events.index(("long", Finish.EOS)) < events.index(("short", SCRIPTS[11][0]))
    assert max(r for r, _ in runtime.steps) == 1


def test_a_stopped_request_leaves_the_batch_at_the_next_step_and_its_cache_slots_are_dropped(make_scheduler) -> None:
    scheduler, runtime = make_scheduler()
    events: list[tuple[str, object]] = []
    first, second = Recorder("first", events), Recorder("second", events)
    stop = threading.Event()
    submit(scheduler, 10, first, stop=stop)
    wait_for(lambda: len(first.tokens) >= 5)
    submit(scheduler, 12, second)
    wait_for(lambda: len(second.tokens) >= 1)
    stop.set()
    assert first.done.wait(10) and second.done.wait(10)
    assert first.finish is Finish.STOPPED and len(first.tokens) < len(SCRIPTS[10])
    assert second.tokens == SCRIPTS[12]
    # After the first left, the cache holds only the second's own steps: its older slots were trimmed.
    alone = [(rows, past) for rows, past in runtime.steps if rows == 1][-1]
    assert alone[1] <= len(SCRIPTS[12])
    assert scheduler.inflight == 0 and scheduler.rows == 0


def test_many_requests_joining_at_different_steps_each_get_their_own_tokens(make_scheduler) -> None:
    scripts = {r: [3 + (r * 7 + k) % 40 for k in range(2 + r % 9)] for r in range(100, 130)}
    runtime = CountingRuntime(scripts)
    scheduler = Scheduler("many", runtime, SchedulerLimits(max_batch_rows=8))
    try:
        events: list[tuple[str, object]] = []
        recorders = {r: Recorder(str(r), events) for r in scripts}
        for r, recorder in recorders.items():
            submit(scheduler, r, recorder)
            time.sleep(0.0005 * (r % 3))
        for r, recorder in recorders.items():
            assert recorder.done.wait(10)
            assert recorder.tokens == scripts[r] and recorder.finish is Finish.EOS
        assert max(rows for rows, _ in runtime.steps) <= 8
    finally:
        scheduler.close()


def test_the_queue_bound_refuses_at_once(make_scheduler) -> None:
    scheduler, _ = make_scheduler(max_queued_requests=1)
    scheduler.hold()
    events: list[tuple[str, object]] = []
    waiting = Recorder("waiting", events)
    submit(scheduler, 11, waiting)
    with pytest.raises(Overloaded, match="1 requests waiting"):
        submit(scheduler, 12, Recorder("refused", events))
    scheduler.release()
    assert waiting.done.wait(10) and waiting.tokens == SCRIPTS[11]


def test_with_many_requests_decoding_arrivals_gather_and_join_together(make_scheduler) -> None:
    # A wait far longer than the test: only the count rule (a quarter of the running requests) lets them in.
    scheduler, runtime = make_scheduler(join_wait_s=60.0)
    events: list[tuple[str, object]] = []
    running = [Recorder(f"running{i}", events) for i in range(8)]
    scheduler.hold()
    for recorder in running:
        submit(scheduler, 10, recorder)
    scheduler.release()
    wait_for(lambda: len(running[0].tokens) >= 3)
    first, second = Recorder("first", events), Recorder("second", events)
    submit(scheduler, 11, first)
    steps = len(runtime.steps)
    wait_for(lambda: len(runtime.steps) >= steps + 3)
    assert first.tokens == [], "one arrival joined 8 running requests without waiting for company"
    submit(scheduler, 12, second)  # two waiting: a quarter of eight
    assert first.done.wait(10) and second.done.wait(10)
    assert (first.tokens, second.tokens) == (SCRIPTS[11], SCRIPTS[12])
    # They joined at the same step, and long before the running requests finished.
    joined = [rows for rows, _ in runtime.steps if rows == 10]
    assert joined, "the two arrivals never decoded in one step with the eight running requests"
    for recorder in running:
        assert recorder.done.wait(10) and recorder.tokens == SCRIPTS[10]
    assert events.index(("first", Finish.EOS)) < events.index(("running0", Finish.EOS))
