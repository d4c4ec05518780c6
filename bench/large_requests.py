"""Large requests against a real server: the memory a big forecast leaves behind, and how long
health probes wait while the server takes a request of tens of megabytes.

Starts `seqcast serve` on the committed vic-elec bundle in its own process, then:

1. reads the server's RSS after a one-series warm-up, right after one forecast of `--series`
   series (1,024 by default), `--settle` seconds later, and after the next, one-series forecast
   (whose calls release what the large batches made ONNX Runtime's memory arenas grow to);
2. sends one forecast of `--big-series` series of `--big-values` values each (1,000 x 7,000
   doubles: a 56 MB message) while a second connection sends a health Check every 2 ms, and
   reports the probes' latency (p50, p99, max) while the big request was in flight.

    python bench/large_requests.py
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqcast.client import SeqcastClient

from served import committed_models, rss_mib, serve



def probe_health(target: str, stop: threading.Event, latencies: list[float]) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            started = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
            latencies.append((time.perf_counter() - started) * 1e3)
            time.sleep(0.002)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1024, help="series in the memory forecast")
    parser.add_argument("--big-series", type=int, default=1000)
    parser.add_argument("--big-values", type=int, default=7000, help="values per series in the big request")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before the last RSS reading")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    proc, target, _ = serve(committed_models("vic-elec"))
    try:
        with SeqcastClient(target) as client:
            client.wait_ready(60)
            client.forecast([(1000 + 100 * rng.random(144)).tolist()], 48, model="vic-elec")
            time.sleep(1)
            warm = rss_mib(proc.pid)
            started = time.perf_counter()
            client.forecast([(1000 + 100 * rng.random(144)).tolist() for _ in range(args.series)], 48, model="vic-elec", timeout=900)
            took = time.perf_counter() - started
            after = rss_mib(proc.pid)
            time.sleep(args.settle)
            settled = rss_mib(proc.pid)
            client.forecast([(1000 + 100 * rng.random(144)).tolist()], 48, model="vic-elec")
            small = rss_mib(proc.pid)
            print(f"RSS: {warm:.0f} MiB warm; {after:.0f} MiB after one {args.series}-series forecast ({took:.1f} s); "
                  f"{settled:.0f} MiB {args.settle:g} s later; {small:.0f} MiB after the next (one-series) forecast")

            big = [(1000 + 100 * rng.random(args.big_values)).tolist() for _ in range(args.big_series)]
            latencies: list[float] = []
            stop = threading.Event()
            prober = threading.Thread(target=probe_health, args=(target, stop, latencies))
            prober.start()
            time.sleep(0.5)
            before = len(latencies)
            started = time.perf_counter()
            client.forecast(big, 48, model="vic-elec", timeout=900)
            took = time.perf_counter() - started
            stop.set()
            prober.join()
            during = sorted(latencies[before:])
            p99 = during[min(len(during) - 1, int(0.99 * len(during)))]
            megabytes = args.big_series * args.big_values * 8 / 1e6
            print(f"health probes during a {megabytes:.0f} MB forecast request ({took:.1f} s): {len(during)} probes, "
                  f"p50 {statistics.median(during):.1f} ms, p99 {p99:.1f} ms, max {during[-1]:.1f} ms; "
                  f"RSS afterwards {rss_mib(proc.pid):.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
