"""Soak: many concurrent mixed clients against one `seqcast serve` process for a while, with
model versions changing underneath, and what must not drift.

`--clients` callers (64) each loop over a mix of calls on the committed en-de and tourism
bundles: unary translations, streamed translations, forecasts, streams cancelled after their
first piece, and translations with a deadline too short to finish. Every `--reload-every`
seconds a new version of one model is dropped into the server's `model_dir` (written under a
hidden name, then renamed) and the version before it removed, so the server's rescan
(`model_poll_seconds` 1) loads, moves traffic and drains all along.

Each call has the statuses it may end with (OK; CANCELLED for the cancelled streams; OK or
DEADLINE_EXCEEDED under a short deadline); anything else is unexpected and listed. Reported:
calls and unexpected errors by kind, versions seen, the server's RSS after `--warmup` seconds
and at the end, and the p99 latency of unary translations in the first and the last fifth of
the measured time (drift). Exits 1 on any unexpected error.

    python bench/soak.py --duration 600          # the 10-minute soak of docs/benchmarks.md
    python bench/soak.py --duration 30 --json    # the CI smoke (tests/test_soak.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from seqcast.v1 import seqcast_pb2 as pb
from seqcast.v1 import seqcast_pb2_grpc as pb_grpc

from served import rss_mib, serve

REPO = Path(__file__).resolve().parents[1]
BUNDLES = {"en-de": REPO / "models" / "en-de" / "1", "tourism": REPO / "models" / "tourism" / "1"}
TEXTS = ["Save changes", "Open the file in a new window", "The connection to the server was lost.",
         "Delete the selected users?", "Your password must contain at least eight characters."]
SERIES = [float(100 + (i % 4) * 30 + i) for i in range(40)]
KINDS = ("unary", "stream", "forecast", "cancel", "deadline")
# The statuses each kind of call may end with; anything else is unexpected.
EXPECTED = {
    "unary": {"OK"}, "stream": {"OK"}, "forecast": {"OK"},
    "cancel": {"CANCELLED"}, "deadline": {"OK", "DEADLINE_EXCEEDED"},
}


@dataclass
class Record:
    """What the clients saw."""

    calls: Counter = field(default_factory=Counter)  # (kind, status)
    unexpected: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    # (time since start, seconds) of every OK unary translation.
    latencies: list[tuple[float, float]] = field(default_factory=list)


def stage(root: Path, name: str, version: int) -> None:
    """Drops version `version` of `name` into `root` as a deployment should: written under a
    hidden name, then renamed. Graphs are links to the committed bundle; the manifest is a copy."""
    staged = root / name / f".{version}"
    staged.mkdir(parents=True)
    for file in BUNDLES[name].iterdir():
        if file.name == "manifest.json":
            manifest = json.loads(file.read_text())
            manifest.update(name=name, version=str(version))
            (staged / file.name).write_text(json.dumps(manifest))
        else:
            (staged / file.name).symlink_to(file)
    staged.rename(root / name / str(version))


async def call(kind: str, channel: grpc.aio.Channel, rng: random.Random, started: float, record: Record) -> None:
    translation, forecasting = pb_grpc.TranslationStub(channel), pb_grpc.ForecastingStub(channel)
    request = pb.TranslateRequest(texts=rng.sample(TEXTS, rng.randint(1, 3)), max_new_tokens=rng.randint(4, 32))
    t0 = time.perf_counter()
    status = "OK"
    try:
        if kind == "unary":
            response = await translation.Translate(request, timeout=60)
            record.versions.add(f"en-de/{response.model_version}")
            record.latencies.append((time.monotonic() - started, time.perf_counter() - t0))
        elif kind == "stream":
            async for _ in translation.TranslateStream(request, timeout=60):
                pass
        elif kind == "forecast":
            series = [pb.Series(values=SERIES[: rng.randint(12, 40)]) for _ in range(rng.randint(1, 8))]
            response = await forecasting.Forecast(pb.ForecastRequest(series=series, horizon=rng.randint(1, 8)), timeout=60)
            record.versions.add(f"tourism/{response.model_version}")
        elif kind == "cancel":
            stream = translation.TranslateStream(request, timeout=60)
            await stream.read()
            stream.cancel()
            status = (await stream.code()).name
        else:
            await translation.Translate(request, timeout=rng.uniform(0.001, 0.05))
    except grpc.aio.AioRpcError as e:
        status = e.code().name
        if status not in EXPECTED[kind]:
            record.unexpected.append(f"{kind}: {status}: {e.details()}")
    else:
        if status not in EXPECTED[kind]:
            record.unexpected.append(f"{kind}: {status}")
    record.calls[kind, status] += 1


async def client(target: str, seed: int, until: float, started: float, record: Record) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        while time.monotonic() < until:
            await call(rng.choices(KINDS, weights=(4, 4, 3, 1, 1))[0], channel, rng, started, record)


async def reload_versions(models: Path, every: float, until: float) -> int:
    """Alternates between the models: drops in the next version, removes the one before it."""
    versions, reloads = {name: 1 for name in BUNDLES}, 0
    while time.monotonic() + every < until:
        await asyncio.sleep(every)
        name = list(BUNDLES)[reloads % len(BUNDLES)]
        versions[name] += 1
        stage(models, name, versions[name])
        await asyncio.sleep(min(every / 2, 2.0))  # the rescan loads it and moves traffic over
        shutil.rmtree(models / name / str(versions[name] - 1))
        reloads += 1
    return reloads


def p99(latencies: list[tuple[float, float]], start: float, end: float) -> float | None:
    window = [s for t, s in latencies if start <= t < end]
    return float(np.percentile(window, 99)) if window else None


async def soak(args: argparse.Namespace, target: str, pid: int, models: Path) -> dict:
    record, started = Record(), time.monotonic()
    until = started + args.warmup + args.duration
    clients = [asyncio.create_task(client(target, seed, until, started, record)) for seed in range(args.clients)]
    reloads = asyncio.create_task(reload_versions(models, args.reload_every, until))
    await asyncio.sleep(args.warmup)
    rss_warm = rss_mib(pid)
    await asyncio.gather(*clients)
    rss_end = rss_mib(pid)
    fifth = args.duration / 5
    measured = [(t, s) for t, s in record.latencies if t >= args.warmup]
    return {
        "clients": args.clients, "duration_s": args.duration, "warmup_s": args.warmup,
        "calls": {f"{kind} {status}": n for (kind, status), n in sorted(record.calls.items())},
        "total_calls": sum(record.calls.values()),
        "unexpected": len(record.unexpected), "unexpected_first": record.unexpected[:10],
        "reloads": await reloads, "versions_seen": sorted(record.versions),
        "rss_mib_after_warmup": round(rss_warm, 1), "rss_mib_end": round(rss_end, 1),
        "rss_growth": round(rss_end / rss_warm - 1, 4),
        "unary_p99_s_first_fifth": p99(measured, args.warmup, args.warmup + fifth),
        "unary_p99_s_last_fifth": p99(measured, args.warmup + 4 * fifth, args.warmup + args.duration + 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="measured seconds after the warm-up (default 600)")
    parser.add_argument("--warmup", type=float, default=30, help="seconds before RSS and latency are measured (default 30)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent callers (default 64)")
    parser.add_argument("--reload-every", type=float, default=20, help="seconds between version changes (default 20)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    models = Path(tempfile.mkdtemp(prefix="seqcast-soak-"))
    for name in BUNDLES:
        stage(models, name, 1)
    proc, target, _ = serve(models, "--model-poll-seconds", "1", "--default-model", "en-de", "--default-forecast-model", "tourism")
    try:
        report = asyncio.run(soak(args, target, proc.pid, models))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(models)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:28} {value}")
    return 1 if report["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
