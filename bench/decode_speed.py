"""Decode speed, side by side in one run: PyTorch without cache, PyTorch with cache, and ONNX
Runtime with cache through the server's decoding loop, float32 and int8 (the graphs as
`seqcast quantize` converts them). Milliseconds per generated token at
batch 1 and batch 16, 64 new tokens per sequence, on real test sentences.

The model has the shape of the reference comparison (d_model 256, 3+3 layers, 4 heads, 8k
vocabulary) with seeded random weights, exported to a temporary bundle the way `seqcast export`
does. End-of-sequence is disabled so every system decodes exactly 64 tokens per row: the
timing does not depend on what the weights are.

    python bench/decode_speed.py [--repeats 5] [--batch 1 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from seqcast.bundle.decoding import greedy_decode, pad_batch
from seqcast.bundle.manifest import SpecialTokens
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.export.graphs import TorchRuntime, graphs_for
from seqcast.export.onnx_export import export_pair, round_weights_fp16
from seqcast.export.quantize import convert_graph
from seqcast.export.transformer import Transformer, TransformerConfig
from seqcast.export.translation.corpus import read_split

NEW_TOKENS = 64
# eos = -1 is never chosen: every row runs to NEW_TOKENS.
NO_EOS = SpecialTokens(pad=0, bos=1, eos=-1)
REPO = Path(__file__).resolve().parents[1]


def sources(batch: int, vocab: int) -> list[list[int]]:
    """Real test sentences, as ids of a byte-level encoding folded into the vocabulary."""
    pairs = read_split(REPO / "data" / "en-de", "test", 200)[100 : 100 + batch]
    return [[4 + (b % (vocab - 4)) for b in p.source.encode()][:60] + [2] for p in pairs]


@torch.inference_mode()
def torch_uncached(model: Transformer, srcs: list[list[int]]) -> None:
    """Recomputes the whole prefix at every step (no cache)."""
    ids, mask = (torch.from_numpy(a) for a in pad_batch(srcs, 0, np.int64))
    prefix = torch.full((len(srcs), 1), NO_EOS.bos, dtype=torch.long)
    for _ in range(NEW_TOKENS):
        nxt = model(ids, mask, prefix)[:, -1].argmax(-1, keepdim=True)
        prefix = torch.cat([prefix, nxt], dim=1)


def cached(runtime: object) -> Callable[[list[list[int]]], None]:
    def run(srcs: list[list[int]]) -> None:
        greedy_decode(runtime, NO_EOS, srcs, [NEW_TOKENS] * len(srcs), lambda *_: None)

    return run


def timed(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=8000, d_model=256, n_heads=4, encoder_layers=3, decoder_layers=3, d_ff=1024)
    model = Transformer(cfg).eval()
    round_weights_fp16(model)
    graphs = graphs_for(model)
    bundle = Path(tempfile.mkdtemp(prefix="seqcast-bench-"))
    export_pair(graphs, bundle, cfg.vocab_size)

    # The same graphs with int8 weights, as `seqcast quantize` makes them (per-row activation scales).
    int8 = Path(tempfile.mkdtemp(prefix="seqcast-bench-int8-"))
    for spec in (graphs.encoder_spec, graphs.decoder_spec):
        convert_graph(bundle / spec.file, int8 / spec.file, "int8")

    def onnx(threads: int, directory: Path = bundle) -> OnnxModel:
        return OnnxModel(directory, graphs.encoder_spec, graphs.decoder_spec, RuntimeOptions(device="cpu", intra_op_threads=threads))

    torch_threads = torch.get_num_threads()
    systems: list[tuple[str, Callable[[list[list[int]]], None]]] = [
        (f"PyTorch eager, no cache ({torch_threads} threads)", lambda s: torch_uncached(model, s)),
        (f"PyTorch eager, KV cache ({torch_threads} threads)", cached(TorchRuntime(graphs))),
        ("ONNX Runtime, KV cache, server loop (1 thread)", cached(onnx(1))),
        ("ONNX Runtime, KV cache, server loop (2 threads)", cached(onnx(2))),
        ("ONNX Runtime int8, KV cache, server loop (1 thread)", cached(onnx(1, int8))),
        ("ONNX Runtime int8, KV cache, server loop (2 threads)", cached(onnx(2, int8))),
    ]
    print(f"decode speed: d_model 256, 3+3 layers, 8k vocabulary, greedy, {NEW_TOKENS} new tokens, median of {args.repeats}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, onnxruntime {ort.__version__}\n")
    print("| system | batch | ms / token | tokens / s | vs ONNX Runtime (1 thread) |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        srcs = sources(batch, cfg.vocab_size)
        results = [(name, timed(lambda fn=fn: fn(srcs), args.repeats)) for name, fn in systems]
        reference = results[2][1]
        for name, seconds in results:
            tokens = NEW_TOKENS * batch
            print(f"| {name} | {batch} | {seconds / tokens * 1e3:.3f} | {tokens / seconds:.0f} | {seconds / reference:.2f}x |")


if __name__ == "__main__":
    main()
