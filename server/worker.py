"""Running a request on its model's decoding worker: admission, deadline and cancellation.

Each model has one decoding thread (ONNX Runtime releases the GIL, so the event loop stays
free). A request is admitted only while the model's queue has room; past that bound it gets
RESOURCE_EXHAUSTED at once instead of waiting without limit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from seqcast.server.errors import DeadlineExceeded, Overloaded
from seqcast.server.models import LoadedModel

# The decoding work: runs on the worker thread and calls `should_stop()` before every step.
Work = Callable[[Callable[[], bool]], None]


class Admission:
    """Counts a model's admitted requests; past the bound a request is refused at once."""

    def __init__(self, model: LoadedModel, max_queued: int) -> None:
        self.model, self.max_queued = model, max_queued

    def __enter__(self) -> None:
        with self.model.lock:
            # One request decodes; up to max_queued wait behind it.
            if self.model.pending > self.max_queued:
                raise Overloaded(
                    f"model {self.model.name} has {self.model.pending} requests in flight (limit "
                    f"{self.max_queued + 1}); retry with backoff"
                )
            self.model.pending += 1

    def __exit__(self, *exc: object) -> None:
        with self.model.lock:
            self.model.pending -= 1


async def run_on_worker(
    model: LoadedModel, deadline: float | None, max_queued: int, stop: threading.Event, work: Work, too_slow: str
) -> None:
    """Admits the request, runs `work` on the model's worker, maps a passed deadline.

    `deadline` is an absolute time.monotonic() (None: none); `stop` set (the client went away)
    ends the work at its next step. `too_slow` tells the caller what to change when the
    deadline passes.
    """

    def should_stop() -> bool:
        return stop.is_set() or (deadline is not None and time.monotonic() > deadline)

    with Admission(model, max_queued):
        await asyncio.get_running_loop().run_in_executor(model.worker, work, should_stop)
    if deadline is not None and time.monotonic() > deadline and not stop.is_set():
        raise DeadlineExceeded(f"the deadline passed before decoding finished; {too_slow}")
