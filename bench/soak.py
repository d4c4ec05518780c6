"""Soak test: many concurrent mixed clients against a real server for minutes; does anything
unexpected happen, does memory grow, does latency drift?

Starts `seqcast serve` on the committed en-de and tourism bundles in its own process and runs
`--clients` concurrent clients on one event loop for `--duration` seconds. Each client loops over
a mix of calls:

  * a streamed translation (TranslateStream), read to its end;
  * a unary translation (Translate), sometimes with beam search or seeded sampling;
  * a forecast of a few tourism series;
  * a stream the client cancels after its first piece;
  * a translation with a deadline too short to finish (DEADLINE_EXCEEDED is expected, OK is fine).

Every call's outcome is checked against what that kind of call may get; anything else is an
unexpected error. At the end it prints the counts, the server's RSS after the warm-up and at the
end, and each kind's p99 latency in the first and the last fifth of the run (drift), and exits 1
if there was an unexpected error or RSS grew more than `--max-rss-growth`.

    python bench/soak.py --duration 600 --clients 64      # the 10-minute soak
    python bench/soak.py --duration 20 --warmup 5 --clients 16   # the smoke CI runs
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import grpc

from seqcast.export.corpus import read_split
from seqcast.v1 import seqcast_pb2 as pb
from seqcast.v1 import seqcast_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]

OK = grpc.StatusCode.OK
# What each kind of call may end with; anything else is unexpected.
EXPECTED: dict[str, set[grpc.StatusCode]] = {
    "stream": {OK},
    "unary": {OK},
    "forecast": {OK},
    "cancel": {grpc.StatusCode.CANCELLED, OK},  # OK: the stream ended before the cancel
    "deadline": {grpc.StatusCode.DEADLINE_EXCEEDED, OK},
}
KINDS = ["stream"] * 4 + ["unary"] * 3 + ["forecast"] * 2 + ["cancel", "deadline"]


@dataclass(frozen=True)
class Outcome:
    kind: str
    code: grpc.StatusCode
    started: float  # seconds since the start of the run
    seconds: float
    detail: str = ""


def serve() -> tuple[subprocess.Popen, str]:
    models = Path(tempfile.mkdtemp(prefix="seqcast-soak-models-"))
    for name in ("en-de", "tourism"):
        (models / name).symlink_to(REPO / "models" / name, target_is_directory=True)
    proc = subprocess.Popen(
        [Path(sys.executable).with_name("seqcast"), "--log-level", "WARNING", "serve", "--model-dir", str(models),
         "--port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"listening on (\S+)", line):
            stdout = proc.stdout
            # Keep the pipe drained; the server's warnings and errors are echoed.
            threading.Thread(target=lambda: [print("server:", line, end="", file=sys.stderr) for line in stdout], daemon=True).start()
            return proc, m.group(1)
    raise RuntimeError(f"the server did not start (exit code {proc.wait()})")


def rss_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert match is not None
    return int(match.group(1)) / 1024


async def one_call(kind: str, translation: pb_grpc.TranslationStub, forecasting: pb_grpc.ForecastingStub,
                   texts: list[str], rng: random.Random) -> grpc.StatusCode:
    """Makes one call of `kind`; its status (a failed call raises AioRpcError)."""
    text = rng.choice(texts)
    if kind == "stream":
        async for _ in translation.TranslateStream(pb.TranslateRequest(texts=[text], max_new_tokens=rng.randint(8, 48)), timeout=120):
            pass
    elif kind == "unary":
        decoding = rng.choice([
            pb.Decoding(),
            pb.Decoding(beam_search=pb.BeamSearch(beam_size=4)),
            pb.Decoding(sampling=pb.Sampling(temperature=0.8, top_k=20, seed=rng.randrange(1000))),
        ])
        await translation.Translate(pb.TranslateRequest(texts=rng.sample(texts, rng.randint(1, 3)), max_new_tokens=32, decoding=decoding), timeout=120)
    elif kind == "forecast":
        series = [pb.Series(values=[100 + 10 * rng.random() + (i % 4) * 5 for i in range(rng.randint(16, 60))]) for _ in range(rng.randint(1, 8))]
        await forecasting.Forecast(pb.ForecastRequest(model="tourism", series=series, horizon=rng.randint(1, 8)), timeout=120)
    elif kind == "cancel":
        call = translation.TranslateStream(pb.TranslateRequest(texts=[text], max_new_tokens=64), timeout=120)
        async for _ in call:
            call.cancel()
            break
        return await call.code()
    elif kind == "deadline":
        await translation.Translate(pb.TranslateRequest(texts=[text] * 8, max_new_tokens=128), timeout=0.02)
    return OK


async def client(target: str, texts: list[str], seed: int, until: float, t0: float, outcomes: list[Outcome]) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        translation, forecasting = pb_grpc.TranslationStub(channel), pb_grpc.ForecastingStub(channel)
        while time.monotonic() < until:
            kind = rng.choice(KINDS)
            started = time.monotonic()
            detail = ""
            try:
                code = await one_call(kind, translation, forecasting, texts, rng)
            except grpc.aio.AioRpcError as e:
                code, detail = e.code(), e.details() or ""
            outcomes.append(Outcome(kind, code, started - t0, time.monotonic() - started, detail))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3 if ordered else float("nan")


async def run(args: argparse.Namespace, target: str, pid: int) -> tuple[list[Outcome], float, float]:
    texts = [p.en for p in read_split(REPO / "data" / "en-de", "test", 200)]
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    until = t0 + args.warmup + args.duration
    tasks = [asyncio.create_task(client(target, texts, seed, until, t0, outcomes)) for seed in range(args.clients)]
    await asyncio.sleep(args.warmup)
    warm = rss_mib(pid)
    print(f"warm-up done: RSS {warm:.0f} MiB, {len(outcomes)} calls", file=sys.stderr, flush=True)
    next_report = time.monotonic() + 30
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.5)
        if time.monotonic() >= next_report:
            next_report += 30
            print(f"  {time.monotonic() - t0:5.0f} s: {len(outcomes)} calls, RSS {rss_mib(pid):.0f} MiB", file=sys.stderr, flush=True)
    await asyncio.gather(*tasks)
    return outcomes, warm, rss_mib(pid)


def report(outcomes: list[Outcome], warm: float, end: float, args: argparse.Namespace) -> bool:
    measured = [o for o in outcomes if o.started >= args.warmup]
    unexpected = [o for o in measured if o.code not in EXPECTED[o.kind]]
    print(f"soak: {args.clients} clients, {args.duration:g} s after {args.warmup:g} s warm-up; {len(measured)} calls measured")
    print("\n| kind | calls | outcomes | p99 ms, first fifth | p99 ms, last fifth |")
    print("|---|---|---|---|---|")
    fifth = args.duration / 5
    by_kind: dict[str, list[Outcome]] = defaultdict(list)
    for o in measured:
        by_kind[o.kind].append(o)
    for kind in EXPECTED:
        calls = by_kind[kind]
        codes = ", ".join(f"{c.name} {n}" for c, n in Counter(o.code for o in calls).most_common())
        first = [o.seconds for o in calls if o.started < args.warmup + fifth and o.code is OK]
        last = [o.seconds for o in calls if o.started >= args.warmup + args.duration - fifth and o.code is OK]
        print(f"| {kind} | {len(calls)} | {codes or '-'} | {p99(first):.0f} | {p99(last):.0f} |")
    growth = (end - warm) / warm
    print(f"\nRSS: {warm:.0f} MiB after the warm-up, {end:.0f} MiB at the end ({growth:+.1%}; limit {args.max_rss_growth:+.0%})")
    print(f"unexpected outcomes: {len(unexpected)}")
    for o in unexpected[:10]:
        print(f"  {o.kind} at {o.started:.1f} s: {o.code.name}: {o.detail[:200]}")
    return not unexpected and growth <= args.max_rss_growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load after the warm-up")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before RSS and latencies count")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-rss-growth", type=float, default=0.05, help="largest allowed RSS growth after the warm-up (fraction)")
    args = parser.parse_args()
    proc, target = serve()
    try:
        outcomes, warm, end = asyncio.run(run(args, target, proc.pid))
        alive = proc.poll() is None
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
    passed = report(outcomes, warm, end, args)
    if not alive:
        print(f"the server exited during the soak (exit code {code})")
    sys.exit(0 if passed and alive else 1)


if __name__ == "__main__":
    main()
