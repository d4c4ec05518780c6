"""Serving benchmark: in-flight batching against no batching and static batching, and the
server's overhead over the bare decoding loop, side by side in one run.

Starts `seqcast serve` on the en-de bundle once per scheduling policy, each its own process (so
the load generator does not share its interpreter; idle ones wait), and drives one at a time with
N concurrent streaming clients (`seqcast.client.loadgen`) for T seconds, on real test-split
sentences. Each cell runs `--rounds` times, the policies taking turns, and shows medians: the
machines here are shared, and a neighbour's burst should slow every policy alike.
Then measures end-to-end latency of single requests through the server against the same
greedy decoding run directly on ONNX Runtime in this process.

    python bench/serving.py --duration 6 --warmup 1 --rounds 3 --concurrency 1 4 16 64
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from seqcast.client import SeqcastClient
from seqcast.client.loadgen import LoadSummary, run_load
from seqcast.export.corpus import read_split
from seqcast.server.decoding import greedy_tokens
from seqcast.server.models import load_model
from seqcast.server.runtime import RuntimeOptions

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "models" / "en-de" / "1"
POLICIES = ("inflight", "static", "none")


def serve(policy: str, threads: int) -> tuple[subprocess.Popen, str]:
    """`seqcast serve` on a model directory holding only en-de; returns the process and its address."""
    models = Path(tempfile.mkdtemp(prefix="seqcast-bench-models-"))
    (models / "en-de").mkdir()
    (models / "en-de" / "1").symlink_to(BUNDLE)
    proc = subprocess.Popen(
        [Path(sys.executable).with_name("seqcast"), "--log-level", "WARNING", "serve", "--model-dir", str(models),
         "--port", "0", "--metrics-port", "0", "--batching", policy, "--intra-op-threads", str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in proc.stdout:
        if m := re.search(r"listening on (\S+)", line):
            return proc, m.group(1)
    raise RuntimeError(f"the server did not start (exit code {proc.wait()})")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@dataclass(frozen=True)
class Cell:
    """One policy at one concurrency: medians over the rounds."""

    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    requests: int
    errors: int


def _median(runs: list[LoadSummary], key: str) -> float:
    return statistics.median(getattr(r, key) or 0.0 for r in runs)


def load_table(args: argparse.Namespace, texts: list[str]) -> dict[tuple[str, int], Cell]:
    """Every policy at every concurrency, `rounds` times, the policies taking turns within a round
    (so a noisy neighbour slows all of them alike); medians per cell."""
    servers = {policy: serve(policy, args.threads) for policy in POLICIES}
    runs: dict[tuple[str, int], list[LoadSummary]] = {}
    try:
        for _, target in servers.values():
            with SeqcastClient(target) as client:
                client.wait_ready(60)
        for clients in args.concurrency:
            for r in range(args.rounds):
                order = POLICIES[r % len(POLICIES):] + POLICIES[:r % len(POLICIES)]
                for policy in order:
                    s = run_load(servers[policy][1], clients, args.duration, max_new_tokens=args.max_new_tokens,
                                 texts=texts, warmup=args.warmup, drain_timeout=120)
                    runs.setdefault((policy, clients), []).append(s)
                    print(f"  {clients:3d} clients, round {r + 1}, {policy:8s}: {s.output_tokens_per_s or 0:7,.0f} tokens/s",
                          file=sys.stderr, flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    cells = {key: Cell(_median(v, "output_tokens_per_s"), _median(v, "ttft_p50_ms"), _median(v, "ttft_p99_ms"),
                       _median(v, "e2e_p50_ms"), _median(v, "e2e_p99_ms"), sum(r.completed for r in v),
                       sum(sum(r.errors.values()) for r in v)) for key, v in runs.items()}
    print("| policy | clients | requests | output tokens/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for policy in POLICIES:
        for clients in args.concurrency:
            c = cells[(policy, clients)]
            print(f"| {policy} | {clients} | {c.requests} | {c.tokens_per_s:,.0f} | {c.ttft_p50_ms:.0f} | {c.ttft_p99_ms:.0f} | "
                  f"{c.e2e_p50_ms:.0f} | {c.e2e_p99_ms:.0f} | {c.errors} |")
    return cells


def overhead(args: argparse.Namespace, texts: list[str]) -> None:
    """Median end-to-end latency of one request through the server against the bare loop."""
    model = load_model(BUNDLE, RuntimeOptions(device="cpu", intra_op_threads=args.threads))
    special = model.manifest.special_tokens
    sources = model.codec.encode(texts)
    proc, target = serve("inflight", args.threads)
    print("\n| text | new tokens | bare ONNX Runtime loop ms | through the server ms | server / bare |")
    print("|---|---|---|---|---|")
    ratios = []
    try:
        with SeqcastClient(target) as client:
            client.wait_ready(60)
            for text, source in zip(texts, sources):
                tokens = greedy_tokens(model.runtime, special, [source], args.max_new_tokens)[0]
                bare, served = [], []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    greedy_tokens(model.runtime, special, [source], args.max_new_tokens)
                    bare.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    client.translate(text, max_new_tokens=args.max_new_tokens)
                    served.append(time.perf_counter() - t0)
                b, s = statistics.median(bare), statistics.median(served)
                ratios.append(s / b)
                print(f"| {text[:40]} | {len(tokens)} | {b * 1e3:.2f} | {s * 1e3:.2f} | {s / b:.2f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"\nmedian server / bare ratio: {statistics.median(ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per cell (after warm-up)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs per cell; the table shows medians")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads of the server")
    parser.add_argument("--repeats", type=int, default=9, help="overhead: calls per text")
    args = parser.parse_args()
    # Sentences, not labels: the 300 longest test-split sources (most UI labels decode in 2-5
    # tokens, where per-request costs, not decoding, would dominate every policy alike).
    texts = sorted((p.en for p in read_split(REPO / "data" / "en-de", "test")), key=len, reverse=True)[:300]
    texts = [t for t in texts if len(t) <= 200]
    print(f"serving benchmark: en-de bundle, greedy, up to {args.max_new_tokens} new tokens, {args.duration:.0f} s per run "
          f"after {args.warmup:.0f} s warm-up, median of {args.rounds} runs per cell")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__}; "
          f"server: {args.threads} intra-op thread(s)\n")
    results = load_table(args, texts)
    for clients in args.concurrency:
        inflight, none, static = (results[(p, clients)] for p in ("inflight", "none", "static"))
        if inflight.tokens_per_s and none.tokens_per_s:
            print(f"\n{clients} clients: in-flight / no batching throughput {inflight.tokens_per_s / none.tokens_per_s:.2f}x; "
                  f"TTFT p99 in-flight {inflight.ttft_p99_ms:.0f} ms vs static {static.ttft_p99_ms:.0f} ms")
    overhead(args, texts[::40][:8])


if __name__ == "__main__":
    main()
