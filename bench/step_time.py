"""Decoder step time against position, with and without the KV cache, on the en-de bundle.

With the cache, step p feeds one new token and the p - 1 cached keys and values; without it,
step p recomputes the whole prefix of p tokens (empty past). Both run the bundle's own
decoder.onnx through ONNX Runtime at batch 1, on a real sentence's encoder output.

    python bench/step_time.py --repeats 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from seqcast.server.decoding import pad_batch
from seqcast.server.models import load_model
from seqcast.server.runtime import RuntimeOptions

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "models" / "en-de" / "1"
POSITIONS = (1, 2, 4, 8, 16, 32, 64, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    model = load_model(BUNDLE, RuntimeOptions(device="cpu", intra_op_threads=args.threads))
    runtime, spec = model.runtime, model.manifest.decoder
    source, mask = pad_batch(model.codec.encode(["The file could not be opened because it is locked."]), 0, np.int64)
    encoded = runtime.encode(source, mask)
    encoded[model.manifest.encoder.attention_mask] = mask
    static = {s.input: encoded[s.source] for s in spec.static}
    shapes = {t.name: t.shape for t in spec.inputs}
    rng = np.random.default_rng(0)

    def feeds(new: int, past: int) -> dict[str, np.ndarray]:
        state = {}
        for s in spec.state:
            dims = [1 if axis == 0 else past if axis == s.seq_axis else d for axis, d in enumerate(shapes[s.input])]
            state[s.input] = rng.standard_normal(dims).astype(np.float32)
        return {
            spec.feed: rng.integers(4, 8000, (1, new)),
            spec.position_ids: np.arange(past, past + new)[None, :],
            spec.attention_mask: np.ones((1, past + new), dtype=np.int64),
            **static,
            **state,
        }

    def timed(f: dict[str, np.ndarray]) -> float:
        runtime.step(f)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            runtime.step(f)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    print(f"decoder step time, en-de bundle, batch 1, median of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}, "
          f"{args.threads} intra-op thread(s)\n")
    print("| position | with cache ms (1 new token, p - 1 cached) | without cache ms (p tokens recomputed) | ratio |")
    print("|---|---|---|---|")
    for p in POSITIONS:
        cached, uncached = timed(feeds(1, p - 1)), timed(feeds(p, 0))
        print(f"| {p} | {cached * 1e3:.3f} | {uncached * 1e3:.3f} | {uncached / cached:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
