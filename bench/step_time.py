"""Decoder step time: against position (cache or not), and across bundles side by side.

Five modes, all running a bundle's own decoder.onnx through the server's ONNX Runtime session
settings on CPU, on real test sentences' encoder outputs:

* positions (default): step time against position p on the en-de bundle at batch 1, with the
  cache (1 new token, p - 1 cached) and without (the whole prefix of p tokens recomputed);
* `--compare`: one step at a fixed past length for each variant x batch x threads cell. Every
  cell runs in a fresh process (no warm caches or allocator state shared between variants),
  and the rounds are interleaved (every cell once per round), so load on a shared machine
  falls on all variants alike. Medians over rounds, with ranges, and ratios to the first variant;
* `--paired`: every variant loaded in one process, single steps alternated between them (in
  reverse order every other turn), and each step's time divided by the first variant's step in
  the same turn; the median of those ratios
  (with its interquartile range) resolves differences of a few percent that the rounds of
  `--compare` cannot. The variants evict each other's weights from the caches, so the absolute
  times are above a lone session's: read the ratios;
* `--profile`: ONNX Runtime's profiler on one variant: time per op type per step (the server's
  CPU session settings, fusions left out included);
* `--split`: whole greedy decodes of exactly 64 new tokens per row through the decoding loop
  (`seqcast.bundle.decoding`), each token's time split into the decoder step (the session call),
  the encoder (its call, spread over the 64 tokens) and the loop's own Python (the rest).

A variant is a bundle directory, `LABEL=BUNDLE_DIR`, or `LABEL=BUNDLE_DIR:DECODER_ONNX` to time
another decoder graph (an experimental form) under that bundle's manifest.

    python bench/step_time.py --repeats 20
    python bench/step_time.py --compare fp32=models/en-de/1 int8=models/en-de/2 --batch 1 16 --threads 1 2 --rounds 3
    python bench/step_time.py --paired fp32=models/en-de/1 int8=models/en-de/2 --batch 1 16 --pairs 2000
    python bench/step_time.py --profile int8=models/en-de/2 --batch 1
    python bench/step_time.py --split int8=models/en-de/2 --batch 1 16 --repeats 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from seqcast.bundle.decoding import greedy_tokens, pad_batch
from seqcast.bundle.loading import Bundle, open_bundle
from seqcast.bundle.manifest import Manifest
from seqcast.bundle.runtime import CPU_DISABLED_FUSIONS, OnnxModel, RuntimeOptions, session_options

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "models" / "en-de" / "1"
POSITIONS = (1, 2, 4, 8, 16, 32, 64, 128)
WARM_UP = 5
SENTENCES = [
    "The file could not be opened because it is locked.",
    "Select the folder where the downloaded files should be saved.",
    "Your changes have not been saved yet.",
    "Do you want to delete this account permanently?",
]


@dataclass(frozen=True)
class Variant:
    label: str
    bundle: Path
    decoder: Path | None = None

    @classmethod
    def parse(cls, text: str) -> "Variant":
        label, _, spec = text.rpartition("=")
        bundle, _, decoder = spec.partition(":")
        path = Path(bundle)
        return cls(label or f"{path.parent.name} v{path.name}", path, Path(decoder).resolve() if decoder else None)

    def __str__(self) -> str:
        return f"{self.label}={self.bundle}" + (f":{self.decoder}" if self.decoder else "")


def load(variant: Variant, threads: int) -> Bundle:
    model = open_bundle(variant.bundle, RuntimeOptions(device="cpu", intra_op_threads=threads))
    if variant.decoder is not None:
        decoder = model.manifest.decoder.model_copy(update={"file": str(variant.decoder)})
        model.runtime = OnnxModel(variant.bundle, model.manifest.encoder, decoder, RuntimeOptions(device="cpu", intra_op_threads=threads))
    return model


def step_feeds(model: Bundle, batch: int, past: int, new: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Decoder inputs for `batch` rows at past length `past` (random cached K/V), `new` new tokens,
    on real sentences' encoder outputs."""
    manifest, spec = model.manifest, model.manifest.decoder
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    source, mask = pad_batch(model.codec.encode(texts), manifest.special_tokens.pad, np.int64)
    encoded = model.runtime.encode(source, mask)
    encoded[manifest.encoder.attention_mask] = mask
    shapes = {t.name: t.shape for t in spec.inputs}
    rng = np.random.default_rng(seed)
    feeds = {s.input: encoded[s.source] for s in spec.static}
    for s in spec.state:
        dims = [batch if axis == 0 else past if axis == s.seq_axis else d for axis, d in enumerate(shapes[s.input])]
        feeds[s.input] = rng.standard_normal(dims).astype(np.float32)
    feeds[spec.feed] = rng.integers(4, manifest.dims.get("vocab_size", 8000), (batch, new))
    feeds[spec.position_ids] = np.tile(np.arange(past, past + new), (batch, 1))
    feeds[spec.attention_mask] = np.ones((batch, past + new), dtype=np.int64)
    return feeds


def median_step(model: Bundle, feeds: dict[str, np.ndarray], repeats: int) -> float:
    """Median seconds of one decoder step over `repeats` calls, after two warm-up calls."""
    for _ in range(2):
        model.runtime.step(feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.runtime.step(feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def alternated_times(calls: int, first: Callable[[], object], second: Callable[[], object]) -> np.ndarray:
    """Seconds of each call, (calls, 2): `calls` pairs of `first` and `second`, the order flipped
    every pair so that running first or second favours neither."""
    times = np.empty((calls, 2))
    for i in range(calls):
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            (first, second)[j]()
            times[i, j] = time.perf_counter() - t0
    return times


def alternate(calls: int, first: Callable[[], object], second: Callable[[], object]) -> tuple[float, float, float]:
    """(median ms of `first`, of `second`, median ratio second / first) over `alternated_times`."""
    times = alternated_times(calls, first, second)
    return float(np.median(times[:, 0])) * 1e3, float(np.median(times[:, 1])) * 1e3, float(np.median(times[:, 1] / times[:, 0]))


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"onnxruntime {ort.__version__}")


# --- positions -----------------------------------------------------------------------------------


def positions(args: argparse.Namespace) -> None:
    model = load(Variant("en-de", BUNDLE), args.threads)
    print(f"decoder step time, en-de bundle, batch 1, median of {args.repeats}; {machine()}, "
          f"{args.threads} intra-op thread(s)\n")
    print("| position | with cache ms (1 new token, p - 1 cached) | without cache ms (p tokens recomputed) | ratio |")
    print("|---|---|---|---|")
    for p in POSITIONS:
        cached = median_step(model, step_feeds(model, 1, p - 1), args.repeats)
        uncached = median_step(model, step_feeds(model, 1, 0, new=p), args.repeats)
        print(f"| {p} | {cached * 1e3:.3f} | {uncached * 1e3:.3f} | {uncached / cached:.1f}x |", flush=True)


# --- compare: one process per cell, rounds interleaved -------------------------------------------


def cell(args: argparse.Namespace) -> None:
    """Runs one cell (in its own process) and prints its median step time as JSON."""
    variant = Variant.parse(args.cell)
    model = load(variant, args.threads[0])
    seconds = median_step(model, step_feeds(model, args.batch[0], args.past), args.repeats)
    print(json.dumps({"ms": seconds * 1e3}))


def run_cell(variant: Variant, batch: int, threads: int, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--cell", str(variant), "--batch", str(batch), "--threads", str(threads),
               "--past", str(args.past), "--repeats", str(args.repeats)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ms"]


def precision_of(variant: Variant) -> str:
    if variant.decoder is not None:
        return "experimental graph"
    info = Manifest.read(variant.bundle).precision
    return info.precision


def compare(args: argparse.Namespace) -> None:
    variants = [Variant.parse(v) for v in args.compare]
    cells = list(itertools.product(args.batch, args.threads, variants))
    results: dict[tuple[int, int, str], list[float]] = defaultdict(list)
    for round_ in range(args.rounds):
        for batch, threads, variant in cells:
            ms = run_cell(variant, batch, threads, args)
            results[batch, threads, variant.label].append(ms)
            print(f"round {round_ + 1}: {variant.label} batch {batch} threads {threads}: {ms:.3f} ms", file=sys.stderr, flush=True)
    print(f"decoder step ms, past length {args.past}, 1 new token; median of {args.repeats} steps per cell, each cell a "
          f"fresh process, {args.rounds} interleaved rounds: median and range over rounds, and the best round (on a "
          f"shared machine the least disturbed); {machine()}\n")
    print("| variant | precision | batch | threads | ms / step (median) | range | best round | vs first (median) | vs first (best) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch, threads in itertools.product(args.batch, args.threads):
        first = results[batch, threads, variants[0].label]
        for variant in variants:
            runs = results[batch, threads, variant.label]
            ms = statistics.median(runs)
            print(f"| {variant.label} | {precision_of(variant)} | {batch} | {threads} | {ms:.3f} | "
                  f"{min(runs):.3f}-{max(runs):.3f} | {min(runs):.3f} | {statistics.median(first) / ms:.2f}x | "
                  f"{min(first) / min(runs):.2f}x |")


# --- paired ----------------------------------------------------------------------------------------


def paired(args: argparse.Namespace) -> None:
    """Alternates single steps of every variant in one process; ratios to the first variant's neighbouring step."""
    variants = [Variant.parse(v) for v in args.paired]
    threads = args.threads[0]
    print(f"decoder step, past length {args.past}, 1 new token, {threads} thread(s); {args.pairs} steps per variant, "
          f"alternated in one process; ratio = a step's time over the first variant's step in the same turn; "
          f"{machine()}\n")
    print("| variant | precision | batch | ms / step (median) | ratio to first: median | interquartile range |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch:
        models = [load(v, threads) for v in variants]
        feeds = [step_feeds(m, batch, args.past) for m in models]
        for model, feed in zip(models, feeds):
            for _ in range(WARM_UP):
                model.runtime.step(feed)
        times = np.empty((args.pairs, len(models)))
        order = list(range(len(models)))
        for i in range(args.pairs):
            # Every other turn in reverse, so that running first or second in a turn favours no
            # variant. (One bundle loaded twice still differs by up to 2% between its two
            # sessions here: read smaller differences as none.)
            for j in order if i % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                models[j].runtime.step(feeds[j])
                times[i, j] = time.perf_counter() - t0
        for j, variant in enumerate(variants):
            ratios = times[:, j] / times[:, 0]
            q1, q3 = np.percentile(ratios, [25, 75])
            print(f"| {variant.label} | {precision_of(variant)} | {batch} | {np.median(times[:, j]) * 1e3:.3f} | "
                  f"{np.median(ratios):.3f} | {q1:.3f}-{q3:.3f} |", flush=True)


# --- profile ---------------------------------------------------------------------------------------


def profile(args: argparse.Namespace) -> None:
    """Per op type: ms per step and share, from ONNX Runtime's profiler (same session settings as the server)."""
    variant = Variant.parse(args.profile)
    model = load(variant, args.threads[0])
    feeds = step_feeds(model, args.batch[0], args.past)
    path = variant.decoder or variant.bundle / model.manifest.decoder.file
    so = session_options(RuntimeOptions(device="cpu", intra_op_threads=args.threads[0]))
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "step")
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=CPU_DISABLED_FUSIONS)
    for _ in range(WARM_UP + args.repeats):
        session.run(None, feeds)
    trace = json.loads(Path(session.end_profiling()).read_text())
    # Only the steps after the warm-up (first-run allocations and caches excluded).
    starts = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e["name"] == "model_run")
    after = starts[WARM_UP]
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= after:
            per_op[event["args"]["op_name"]] += event["dur"] / 1e3 / args.repeats
            nodes[event["args"]["op_name"]].add(event["name"])
    total = sum(per_op.values())
    print(f"ONNX Runtime profile of {variant.label}: batch {args.batch[0]}, past {args.past}, {args.threads[0]} thread(s), "
          f"mean of {args.repeats} steps; kernel time {total:.3f} ms / step\n")
    print("| op type (after ONNX Runtime's fusions) | nodes | ms / step | share |")
    print("|---|---|---|---|")
    for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]):
        print(f"| {op} | {len(nodes[op])} | {ms:.3f} | {ms / total:.0%} |")


# --- split -----------------------------------------------------------------------------------------

SPLIT_TOKENS = 64


def split(args: argparse.Namespace) -> None:
    """Per generated token: the decoding loop's time, split into decoder step, encoder and the loop's Python."""
    print(f"greedy decoding, exactly {SPLIT_TOKENS} new tokens per row, {args.threads[0]} thread(s); medians of "
          f"{args.repeats} decodes after 2 warm-ups; ms per step (one token per row); {machine()}\n")
    print("| variant | batch | whole step | decoder call | encoder call (per step) | loop's Python | Python share |")
    print("|---|---|---|---|---|---|---|")
    for variant, batch in itertools.product([Variant.parse(v) for v in args.split], args.batch):
        model = load(variant, args.threads[0])
        runtime, spent = model.runtime, {"step": 0.0, "encode": 0.0}

        def timed(call, key):
            def run(*a):
                t0 = time.perf_counter()
                try:
                    return call(*a)
                finally:
                    spent[key] += time.perf_counter() - t0
            return run

        runtime.step, runtime.encode = timed(runtime.step, "step"), timed(runtime.encode, "encode")
        sources = model.codec.encode([SENTENCES[i % len(SENTENCES)] for i in range(batch)])
        rows = []
        for i in range(2 + args.repeats):
            spent.update(step=0.0, encode=0.0)
            t0 = time.perf_counter()
            greedy_tokens(runtime, model.manifest.special_tokens, sources, SPLIT_TOKENS, min_new_tokens=SPLIT_TOKENS)
            whole = time.perf_counter() - t0
            if i >= 2:
                rows.append((whole, spent["step"], spent["encode"], whole - spent["step"] - spent["encode"]))
        whole, step, encode, python = (statistics.median(column) / SPLIT_TOKENS * 1e3 for column in zip(*rows))
        print(f"| {variant.label} | {batch} | {whole:.3f} | {step:.3f} | {encode:.3f} | {python:.3f} | {python / whole:.0%} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs="+", metavar="VARIANT", help="variants to time side by side")
    parser.add_argument("--paired", nargs="+", metavar="VARIANT", help="variants to time step by step, alternated in one process")
    parser.add_argument("--pairs", type=int, default=2000, help="steps per variant (paired)")
    parser.add_argument("--profile", metavar="VARIANT", help="profile one variant's decoder step by op type")
    parser.add_argument("--split", nargs="+", metavar="VARIANT",
                        help="variants to decode whole, split into decoder step, encoder and the loop's Python")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--past", type=int, default=30, help="cached tokens per row (compare, profile)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.cell:
        cell(args)
    elif args.compare:
        compare(args)
    elif args.paired:
        paired(args)
    elif args.profile:
        profile(args)
    elif args.split:
        split(args)
    else:
        args.threads = args.threads[0]
        positions(args)


if __name__ == "__main__":
    main()
