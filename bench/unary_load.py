"""Unary load: N concurrent `Translate` callers against `seqcast serve`, and where the server's CPU went.

Starts `seqcast serve` on the en-de bundle (one intra-op thread) and, `--rounds` times, runs N
client threads in their own process at the lowest CPU priority (as a client on another machine
would take no CPU from the server), each sending one test-split sentence per call, exactly
`--max-new-tokens` new tokens, back to back for `--duration` seconds after one second of warm-up.
Prints tokens/s and, from the kernel's scheduler statistics, the cores the decoding thread and
all the server's other threads (gRPC, the event loop) used over the round.

    python bench/unary_load.py --concurrency 16 --duration 5 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from seqcast.client import SeqcastClient

from served import committed_models, serve
from serving import cpu_split, thread_times

CLIENTS = r"""
import sys, threading, time
from seqcast.client import SeqcastClient
sys.path.insert(0, sys.argv[5])
from serving import texts_for_bench
target, n, seconds, tokens = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
texts = texts_for_bench()
made = [0] * n

def caller(i: int) -> None:
    with SeqcastClient(target) as client:
        warm = time.perf_counter() + 1.0
        while time.perf_counter() < warm:
            client.translate(texts[i % len(texts)], max_new_tokens=tokens, min_new_tokens=tokens)
        started, k = time.perf_counter(), i
        while time.perf_counter() - started < seconds:
            made[i] += client.translate(texts[k % len(texts)], max_new_tokens=tokens, min_new_tokens=tokens)[0].output_tokens
            k += n

threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sum(made) / seconds)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per round, after 1 s of warm-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    proc, target, _ = serve(committed_models("en-de"), "--intra-op-threads", "1")
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    rates, decode, others = [], [], []
    try:
        with SeqcastClient(target) as client:
            client.wait_ready(60)
        print(f"command: python bench/unary_load.py {' '.join(sys.argv[1:])}")
        for r in range(args.rounds):
            before, started = thread_times(proc.pid), time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CLIENTS, target, str(args.concurrency), str(args.duration), str(args.max_new_tokens), bench_dir],
                capture_output=True, text=True, check=True, preexec_fn=lambda: os.nice(19),
            )
            split = cpu_split(before, thread_times(proc.pid), time.perf_counter() - started)
            rates.append(float(out.stdout.strip().splitlines()[-1]))
            decode.append(split.decode_running)
            others.append(split.other_running)
            print(f"round {r + 1}: {rates[-1]:,.0f} tokens/s; decoding thread {split.decode_running:.2f} cores, "
                  f"other server threads {split.other_running:.2f} cores (over the client process's whole run)", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"median: {statistics.median(rates):,.0f} tokens/s; decoding thread {statistics.median(decode):.2f} cores, "
          f"other server threads {statistics.median(others):.2f} cores")


if __name__ == "__main__":
    main()
