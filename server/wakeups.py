"""Wake-ups from the decoding thread to event loops: one per loop per decoding step.

Each token of a streaming request wakes its handler on the event loop. A
`loop.call_soon_threadsafe` per token writes to the loop's self-pipe (a system call) once per
token, which at 16 rows is 16 writes per step. Inside `batched()`, `call_soon` collects the
callbacks and the block's end sends each loop one wake-up that runs them all, in order.
Outside `batched()`, `call_soon` is `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_local = threading.local()


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """Runs `callback` on `loop`'s thread soon: at the end of the current `batched()` block, if any."""
    pending: dict[asyncio.AbstractEventLoop, list[Callable[[], object]]] | None = getattr(_local, "pending", None)
    if pending is None:
        _send(loop, [callback])
    else:
        pending.setdefault(loop, []).append(callback)


@contextmanager
def batched() -> Iterator[None]:
    """Collects this thread's `call_soon` callbacks and sends them when the block ends."""
    _local.pending = {}
    try:
        yield
    finally:
        pending, _local.pending = _local.pending, None
        for loop, callbacks in pending.items():
            _send(loop, callbacks)


def _send(loop: asyncio.AbstractEventLoop, callbacks: list[Callable[[], object]]) -> None:
    try:
        loop.call_soon_threadsafe(_run_all, callbacks)
    except RuntimeError:  # the loop is closed: nobody is waiting for these any more
        pass


def _run_all(callbacks: list[Callable[[], object]]) -> None:
    for callback in callbacks:
        callback()
