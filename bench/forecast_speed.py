"""Forecast latency and throughput through the real gRPC server.

Starts the server on 127.0.0.1 with the forecast bundles of a model directory, then sends
`Forecast` calls of 1, 64 and 1,024 real series (tourism or vic_elec histories, repeated to fill
the larger calls) to each model, one call at a time, and prints the median latency and the
series and forecast values per second.

    python bench/forecast_speed.py --models-dir models --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import onnxruntime as ort

from seqcast.client import SeqcastClient
from seqcast.export.forecast.data import TASKS, windows
from seqcast.server.app import create_server
from seqcast.server.settings import ServerSettings

CALL_SIZES = (1, 64, 1024)
# Data set of a bundle, by the frequency its manifest records.
DATA_BY_FREQUENCY = {"QS": "tourism", "30min": "vic_elec"}


class Server:
    """The real server on its own event loop thread."""

    def __init__(self, settings: ServerSettings) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.running = asyncio.run_coroutine_threadsafe(create_server(settings), self.loop).result()
        self.target = f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(1.0), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


def histories(data: str, count: int, length: int) -> list[list[float]]:
    """`count` real histories of `length` values (test windows of `data`, repeated as needed)."""
    task = TASKS[data]
    items = windows(task, task.load(), "test")
    return [items[i % len(items)].history[-length:].astype(float).tolist() for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()

    settings = ServerSettings(model_dir=args.models_dir, port=0, intra_op_threads=args.threads, log_level="WARNING")
    server = Server(settings)
    print(f"forecast speed through the server: one call at a time, median of {args.repeats}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__}, "
          f"{args.threads} intra-op thread(s)\n")
    print("| model | horizon | series per call | latency ms (median) | series/s | forecast values/s |")
    print("|---|---|---|---|---|---|")
    try:
        with SeqcastClient(server.target) as client:
            for info in sorted(client.list_models(), key=lambda m: m.name):
                if info.forecast is None or info.forecast.frequency not in DATA_BY_FREQUENCY:
                    continue
                data = DATA_BY_FREQUENCY[info.forecast.frequency]
                horizon = info.forecast.max_horizon
                # Twice what the model reads: the server cuts each series to its context length.
                pool = histories(data, max(CALL_SIZES), 2 * info.forecast.context_length)
                for size in CALL_SIZES:
                    series = pool[:size]
                    client.forecast(series, horizon, model=info.name)  # warm-up
                    times = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        client.forecast(series, horizon, model=info.name)
                        times.append(time.perf_counter() - t0)
                    median = statistics.median(times)
                    print(f"| {info.name} | {horizon} | {size} | {median * 1e3:.1f} | {size / median:,.0f} | "
                          f"{size * horizon / median:,.0f} |", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
