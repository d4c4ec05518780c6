"""Serving benchmark: in-flight batching against static and no batching, and the server against
its own bare decoding loop, side by side in one run.

Starts `seqcast serve` on the en-de bundle once per scheduling policy, each its own process, and
drives one at a time with N concurrent streaming clients (`seqcast-client bench`, its own
process at the lowest CPU priority by default: `--client-nice`) for T seconds, on real test-split
sentences. With `--exact` (the default) every request decodes
exactly `--max-new-tokens` tokens (min_new_tokens = max_new_tokens), so request lengths don't
vary and the server can be held against the bare loop: the same greedy decoding run directly on
ONNX Runtime at batch N, each cell in a fresh process, for the same time. Every cell runs
`--rounds` times, the cells taking turns within a round (a neighbour's burst slows all alike),
and the table shows medians with the range.

    python bench/serving.py --duration 8 --warmup 2 --rounds 3 --concurrency 1 16 64

Internally `--bare N` runs one bare-loop cell and prints its tokens/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from seqcast.bundle.decoding import greedy_tokens
from seqcast.bundle.loading import open_bundle
from seqcast.bundle.runtime import RuntimeOptions
from seqcast.client import SeqcastClient
from seqcast.client.loadgen import LoadSummary
from seqcast.export.translation.corpus import read_split

from served import committed_models, serve

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "models" / "en-de" / "1"
POLICIES = ("inflight", "static", "none")


def texts_for_bench() -> list[str]:
    # Sentences, not labels: the longest test-split sources up to 200 characters.
    texts = sorted((p.source for p in read_split(REPO / "data" / "en-de", "test")), key=len, reverse=True)[:300]
    return [t for t in texts if len(t) <= 200]


def bare_cell(batch: int, args: argparse.Namespace) -> tuple[float, float, float]:
    """Tokens/s of the bare loop, its CPU ms per token, and its mean decoder call in ms: greedy
    batches of `batch` texts, each decoding exactly max_new_tokens (end-of-sequence held back),
    for `duration` seconds after `warmup`. ONNX Runtime runs on the calling thread (one intra-op
    thread), so its CPU time is the loop's."""
    model = open_bundle(BUNDLE, RuntimeOptions(device="cpu", intra_op_threads=args.threads))
    calls: list[float] = []
    step = model.runtime.step

    def timed_step(feeds: dict) -> dict:
        t0 = time.perf_counter()
        out = step(feeds)
        calls.append(time.perf_counter() - t0)
        return out

    model.runtime.step = timed_step  # type: ignore[method-assign]
    special = model.manifest.special_tokens
    sources = model.codec.encode(texts_for_bench())
    n, i = args.max_new_tokens, 0

    def one_batch() -> int:
        nonlocal i
        group = [sources[(i + k) % len(sources)] for k in range(batch)]
        i += batch
        return sum(len(o) for o in greedy_tokens(model.runtime, special, group, n, min_new_tokens=n))

    warm_until = time.perf_counter() + args.warmup
    while time.perf_counter() < warm_until:
        one_batch()
    calls.clear()
    tokens, started, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - started < args.duration:
        tokens += one_batch()
    return tokens / (time.perf_counter() - started), (time.thread_time() - cpu) / tokens * 1e3, statistics.mean(calls) * 1e3


def run_bare(batch: int, args: argparse.Namespace) -> tuple[float, float, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--bare", str(batch), "--duration", str(args.duration), "--warmup", str(args.warmup),
         "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)],
        capture_output=True, text=True, check=True,
    )
    rate, cpu_ms, call_ms = out.stdout.strip().splitlines()[-1].split()
    return float(rate), float(cpu_ms), float(call_ms)


def decoder_calls(metrics_url: str) -> tuple[float, float]:
    """The server's decoder-step histogram (ONNX Runtime's call alone): seconds in all, and calls."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    total = sum(float(v) for v in re.findall(r"^seqcast_decoder_step_duration_seconds_sum\{[^}]*\} (\S+)$", text, re.M))
    count = sum(float(v) for v in re.findall(r"^seqcast_decoder_step_duration_seconds_count\{[^}]*\} (\S+)$", text, re.M))
    return total, count


@dataclass(frozen=True)
class ThreadTime:
    """Seconds a thread ran on a core, and seconds it was runnable but waited for one."""

    running: float
    waiting: float


def thread_times(pid: int) -> dict[int, ThreadTime]:
    """Every thread of process `pid`, by thread id, from the kernel's scheduler statistics
    (/proc/<pid>/task/<tid>/schedstat: nanoseconds on a core, nanoseconds on a run queue)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            running, waiting = (task / "schedstat").read_text().split()[:2]
        except OSError:  # the thread ended
            continue
        out[int(task.name)] = ThreadTime(int(running) / 1e9, int(waiting) / 1e9)
    return out


@dataclass(frozen=True)
class CpuSplit:
    """Where a server's time went during one cell, in cores (seconds per second of the cell)."""

    decode_running: float  # the decoding thread on a core
    decode_waiting: float  # the decoding thread runnable, waiting for a core
    other_running: float  # every other thread (gRPC, the event loop, the task layer) together
    call_ms: float = 0.0  # the mean decoder call (ONNX Runtime's run) of the cell's steps


def cpu_split(before: dict[int, ThreadTime], after: dict[int, ThreadTime], seconds: float) -> CpuSplit:
    """The busiest thread is the decoding thread (ONNX Runtime runs on it with one intra-op thread)."""
    zero = ThreadTime(0.0, 0.0)
    used = {t: ThreadTime(a.running - before.get(t, zero).running, a.waiting - before.get(t, zero).waiting) for t, a in after.items()}
    top = max(used, key=lambda t: used[t].running)
    others = sum(u.running for t, u in used.items() if t != top)
    return CpuSplit(used[top].running / seconds, used[top].waiting / seconds, others / seconds)


@dataclass(frozen=True)
class Cell:
    """One policy at one concurrency: medians (and min, max of tokens/s) over the rounds."""

    tokens_per_s: float
    low: float
    high: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    requests: int
    errors: int
    # Medians of the server's CpuSplit over the rounds.
    cpu: CpuSplit = CpuSplit(0.0, 0.0, 0.0)


def _cell(runs: list[LoadSummary]) -> Cell:
    rates = [r.output_tokens_per_s or 0.0 for r in runs]
    return Cell(statistics.median(rates), min(rates), max(rates),
                statistics.median(r.ttft_p50_ms or 0.0 for r in runs), statistics.median(r.ttft_p99_ms or 0.0 for r in runs),
                sum(r.completed for r in runs), sum(sum(r.errors.values()) for r in runs))


def run_client(target: str, clients: int, args: argparse.Namespace, texts_file: Path, exact: int | None) -> LoadSummary:
    """One load-generator cell: `seqcast-client bench` in its own process at CPU priority
    `--client-nice`, so that on a machine of few cores it takes only what the server leaves idle,
    as a client on another machine would."""
    command = [str(Path(sys.executable).with_name("seqcast-client")), "--target", target, "bench",
               "--concurrency", str(clients), "--duration", str(args.duration), "--warmup", str(args.warmup),
               "--max-new-tokens", str(args.max_new_tokens), "--texts", str(texts_file), "--drain", "120", "--json", "--quiet"]
    if exact is not None:
        command += ["--min-new-tokens", str(exact)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, preexec_fn=lambda: os.nice(args.client_nice))
    return LoadSummary(**json.loads(out.stdout))


def measure(args: argparse.Namespace, texts: list[str]) -> tuple[dict[tuple[str, int], Cell], dict[int, list[tuple[float, float]]]]:
    models = committed_models("en-de")
    servers = {}
    for policy in POLICIES:
        proc, target, startup = serve(models, "--batching", policy, "--intra-op-threads", str(args.threads))
        metrics_url = re.search(r"(http://\S+/metrics)", startup)
        assert metrics_url is not None, startup
        servers[policy] = proc, target, metrics_url.group(1)
    texts_file = Path(tempfile.mkdtemp(prefix="seqcast-bench-texts-")) / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    runs: dict[tuple[str, int], list[LoadSummary]] = {}
    bare: dict[int, list[tuple[float, float, float]]] = {}
    cpu: dict[tuple[str, int], list[CpuSplit]] = {}
    exact = args.max_new_tokens if args.exact else None
    try:
        for _, target, _ in servers.values():
            with SeqcastClient(target) as client:
                client.wait_ready(60)
        kinds = (*POLICIES, "bare")
        for clients in args.concurrency:
            for r in range(args.rounds):
                for cell in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                    if cell == "bare":
                        rate, cpu_ms, call_ms = run_bare(clients, args)
                        bare.setdefault(clients, []).append((rate, cpu_ms, call_ms))
                    else:
                        pid = servers[cell][0].pid
                        before, calls_before = thread_times(pid), decoder_calls(servers[cell][2])
                        s = run_client(servers[cell][1], clients, args, texts_file, exact)
                        # Over the load generator's sending time (warm-up and window), not its start-up.
                        split = cpu_split(before, thread_times(pid), s.window_start_s + s.window_s)
                        (t0, n0), (t1, n1) = calls_before, decoder_calls(servers[cell][2])
                        split = dataclasses.replace(split, call_ms=(t1 - t0) / max(n1 - n0, 1) * 1e3)
                        runs.setdefault((cell, clients), []).append(s)
                        cpu.setdefault((cell, clients), []).append(split)
                        rate = s.output_tokens_per_s or 0
                    print(f"  {clients:3d} clients, round {r + 1}, {cell:8s}: {rate:7,.0f} tokens/s", file=sys.stderr, flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    cells = {key: _cell(v) for key, v in runs.items()}
    medians = {key: CpuSplit(*(statistics.median(getattr(c, f) for c in splits) for f in ("decode_running", "decode_waiting", "other_running", "call_ms")))
               for key, splits in cpu.items()}
    return {key: Cell(**{**c.__dict__, "cpu": medians[key]}) for key, c in cells.items()}, bare


def report(cells: dict[tuple[str, int], Cell], bare: dict[int, list[tuple[float, float, float]]], args: argparse.Namespace) -> None:
    print("| clients | bare loop tok/s (batch = clients) | in-flight tok/s | in-flight / bare | static tok/s | none tok/s "
          "| in-flight / none | TTFT p50 ms in-flight / static / none | TTFT p99 ms in-flight / static / none | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.concurrency:
        i, s, z = (cells[(p, n)] for p in POLICIES)
        rates = [r for r, _, _ in bare[n]]
        b = statistics.median(rates)
        print(f"| {n} | {b:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | {i.tokens_per_s:,.0f} ({i.low:,.0f}-{i.high:,.0f}) "
              f"| {i.tokens_per_s / b:.2f} | {s.tokens_per_s:,.0f} | {z.tokens_per_s:,.0f} | {i.tokens_per_s / max(z.tokens_per_s, 1e-9):.2f}x "
              f"| {i.ttft_p50_ms:.0f} / {s.ttft_p50_ms:.0f} / {z.ttft_p50_ms:.0f} "
              f"| {i.ttft_p99_ms:.0f} / {s.ttft_p99_ms:.0f} / {z.ttft_p99_ms:.0f} | {i.errors + s.errors + z.errors} |")
    print("\nWhere the in-flight server's time went (medians over rounds, fractions of the cell's wall time): the "
          "decoding thread on a core, runnable but waiting for one (on a run queue), and asleep (blocked on the "
          "interpreter lock, or waiting for work); its CPU per generated token against the bare loop's; and every "
          "other server thread's cores together; and the mean decoder call (ONNX Runtime's run alone: the server's "
          "step histogram, the bare loop's own timer) against the bare loop's. At more than one stream the server's "
          "rows sit at different positions, so its calls are not the bare loop's lock-step ones.\n")
    print("| clients | decoding thread running | waiting for a core | asleep (the interpreter lock, or no work) "
          "| CPU ms / token: decoding thread / bare loop | decoder call ms: server / bare loop | other threads running |")
    print("|---|---|---|---|---|---|---|")
    for n in args.concurrency:
        c = cells[("inflight", n)]
        per_token = c.cpu.decode_running / max(c.tokens_per_s, 1e-9) * 1e3
        bare_ms = statistics.median(ms for _, ms, _ in bare[n])
        bare_call = statistics.median(call for _, _, call in bare[n])
        asleep = max(0.0, 1.0 - c.cpu.decode_running - c.cpu.decode_waiting)
        print(f"| {n} | {c.cpu.decode_running:.2f} | {c.cpu.decode_waiting:.2f} | {asleep:.2f} | {per_token:.3f} / {bare_ms:.3f} "
              f"| {c.cpu.call_ms:.3f} / {bare_call:.3f} | {c.cpu.other_running:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per cell (after warm-up)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs per cell; the table shows medians")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--exact", action=argparse.BooleanOptionalAction, default=True,
                        help="every request decodes exactly --max-new-tokens tokens (default on)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads, server and bare loop")
    parser.add_argument("--client-nice", type=int, default=19, choices=range(0, 20), metavar="0-19",
                        help="CPU priority (nice) of the load generator: 19 (default) lets it use only CPU the server "
                             "leaves idle, as a client on another machine would; 0 lets it compete with the server")
    parser.add_argument("--bare", type=int, metavar="BATCH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        print(*bare_cell(args.bare, args))
        return
    texts = texts_for_bench()
    lengths = f"exactly {args.max_new_tokens}" if args.exact else f"up to {args.max_new_tokens}"
    print(f"serving benchmark: en-de bundle, greedy, {lengths} new tokens per request, {args.duration:.0f} s per cell "
          f"after {args.warmup:.0f} s warm-up, median (min-max) of {args.rounds} rounds")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__}; "
          f"{args.threads} intra-op thread(s); load generator at nice {args.client_nice}")
    print("command: python bench/serving.py " + " ".join(sys.argv[1:]) + "\n")
    cells, bare = measure(args, texts)
    report(cells, bare, args)


if __name__ == "__main__":
    main()
