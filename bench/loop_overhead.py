"""Python work per decoder step: the server's decoding thread against the bare loop, with the model's
cost taken out.

A replaying runtime stands in for ONNX Runtime: it runs the en-de bundle's real encoder and decoder
once for each input shape it meets and afterwards returns those outputs at once, so a step costs
only the Python around it (the CPU time of the real runs, for shapes met the first time, is
subtracted). Then, in one process, rounds alternate between

  * the bare loop: `greedy_tokens` at batch N, exactly `--tokens` new tokens per row;
  * the server's path without gRPC: N requests at a time through the model's `Scheduler`, each
    read from its handle as a stream on an asyncio loop, exactly `--tokens` new tokens each;

and the table gives the decoding thread's CPU time per step (the bare loop's thread, or the
scheduler's thread from the kernel's counters), medians over rounds with the range. The
difference is what the scheduler adds to every step: admission, delivery, wake-ups, metrics.

    python bench/loop_overhead.py --batch 1 16 --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from seqcast.bundle.decoding import greedy_tokens
from seqcast.bundle.loading import open_bundle
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.bundle.strategies import GreedySequence
from seqcast.server.scheduler import Scheduler, SchedulerLimits, Work

from serving import BUNDLE, texts_for_bench


class Replay:
    """The bundle's runtime, replaying the first outputs it computed for each input shape."""

    def __init__(self, runtime: OnnxModel) -> None:
        self.runtime = runtime
        self.encoder_spec, self.decoder_spec = runtime.encoder_spec, runtime.decoder_spec
        self._encoded: dict[tuple[int, ...], dict[str, np.ndarray]] = {}
        self._stepped: dict[tuple[int, int, int], dict[str, Any]] = {}
        # CPU seconds spent in real runs, on whichever thread called.
        self.real_cpu = 0.0

    def encode(self, source: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        if source.shape not in self._encoded:
            started = time.thread_time()
            self._encoded[source.shape] = self.runtime.encode(source, attention_mask)
            self.real_cpu += time.thread_time() - started
        return dict(self._encoded[source.shape])

    def step(self, feeds: dict[str, Any]) -> dict[str, Any]:
        spec = self.decoder_spec
        cache, source = spec.state[0], next(s for s in spec.static if s.seq_axis is not None)
        key = (len(feeds[spec.feed]), feeds[cache.input].shape[cache.seq_axis], feeds[source.input].shape[source.seq_axis])
        if key not in self._stepped:
            started = time.thread_time()
            self._stepped[key] = self.runtime.step(feeds)
            self.real_cpu += time.thread_time() - started
        return dict(self._stepped[key])


def bare(runtime: Replay, special: Any, sources: list[list[int]], batch: int, tokens: int, seconds: float) -> float:
    """CPU microseconds per step of the bare loop."""
    steps, started, cpu, real = 0, time.perf_counter(), time.thread_time(), runtime.real_cpu
    while time.perf_counter() - started < seconds:
        greedy_tokens(runtime, special, sources[:batch], tokens, min_new_tokens=tokens)
        steps += tokens
    return (time.thread_time() - cpu - (runtime.real_cpu - real)) / steps * 1e6


def served(runtime: Replay, special: Any, sources: list[list[int]], batch: int, tokens: int, seconds: float) -> float:
    """CPU microseconds per step of the scheduler's decoding thread, `batch` streams at a time."""

    async def run() -> float:
        scheduler = Scheduler("loop-overhead", runtime, SchedulerLimits.defaults())
        counters = Path(f"/proc/self/task/{scheduler._thread.native_id}/schedstat")

        def cpu() -> float:
            return int(counters.read_text().split()[0]) / 1e9

        async def one(source: list[int]) -> None:
            work = Work([GreedySequence(special.eos, tokens, tokens)], [source], special.pad,
                        np.full(1, special.bos, dtype=np.int64))
            async for _ in scheduler.submit(work, None, stream=True).events():
                pass

        steps, started, used, real = 0, time.perf_counter(), cpu(), runtime.real_cpu
        while time.perf_counter() - started < seconds:
            await asyncio.gather(*(one(s) for s in sources[:batch]))
            steps += tokens
        used = cpu() - used - (runtime.real_cpu - real)
        scheduler.close()
        return used / steps * 1e6

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per row")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="per cell and round")
    args = parser.parse_args()
    model = open_bundle(BUNDLE, RuntimeOptions(device="cpu", intra_op_threads=1))
    runtime, special = Replay(model.runtime), model.manifest.special_tokens
    sources = model.codec.encode(texts_for_bench())
    print(f"Python work per decoder step (CPU µs), en-de bundle replayed, exactly {args.tokens} tokens per row, "
          f"median (min-max) of {args.rounds} alternating rounds of {args.seconds:g} s")
    print("command: python bench/loop_overhead.py " + " ".join(sys.argv[1:]) + "\n")
    print("| batch | bare loop µs / step | scheduler µs / step | scheduler adds |")
    print("|---|---|---|---|")
    for batch in args.batch:
        for _ in range(2):  # record the outputs of every shape both paths meet before timing
            bare(runtime, special, sources, batch, args.tokens, 0.2)
            served(runtime, special, sources, batch, args.tokens, 0.2)
        loop, sched = [], []
        for _ in range(args.rounds):
            loop.append(bare(runtime, special, sources, batch, args.tokens, args.seconds))
            sched.append(served(runtime, special, sources, batch, args.tokens, args.seconds))
        b, s = statistics.median(loop), statistics.median(sched)
        print(f"| {batch} | {b:.1f} ({min(loop):.1f}-{max(loop):.1f}) | {s:.1f} ({min(sched):.1f}-{max(sched):.1f}) | {s - b:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
