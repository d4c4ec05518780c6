"""The cost of alignments through the server's decoding loop: ms per token with alignments asked
for, not asked for, and from the same bundle without the alignments output, at batch 1 and 16.

Each cell is one whole greedy decode of exactly 64 new tokens per row (end-of-sequence held back)
by `seqcast.bundle.decoding.Decoder` with the strategies the server uses: "asked" rows report
alignments (the loop reads the output and each row emits its tokens with their rows), "not
asked" rows do not (the output is computed by the graph but never read), and "no output" runs a
copy of the decoder graph without the output (`remove_output`), what a bundle exported before
alignments decodes. The three cells of a batch size run back to back in one process, in an
order that rotates every round, so a busy machine loads them alike; the table gives the median
and min ms per token over rounds, and the median over rounds of each cell's ratio to "no output"
in the same round (the paired figure to read on a shared machine). One ONNX Runtime thread.

    python bench/alignment_cost.py [--bundle models/en-de/1] [--rounds 15] [--batch 1 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seqcast.bundle.decoding import Decoder
from seqcast.bundle.loading import Bundle, open_bundle
from seqcast.bundle.manifest import Manifest
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.bundle.strategies import Greedy, token_sequence

REPO = Path(__file__).resolve().parents[1]
NEW_TOKENS = 64
CELLS = ("no output", "not asked", "asked")


def _without_output(bundle: Path, work: Path) -> OnnxModel:
    """The bundle's runtime on a copy of its decoder graph without the alignments output."""
    import onnx

    from seqcast.export.translation.add_alignments import remove_output

    manifest = Manifest.read(bundle)
    assert manifest.decoder.alignments is not None, f"{bundle} has no alignments output to measure"
    shutil.copytree(bundle, work, dirs_exist_ok=True)
    graph = remove_output(onnx.load(str(bundle / manifest.decoder.file)), manifest.decoder.alignments)
    onnx.save_model(graph, str(work / manifest.decoder.file))
    outputs = [o for o in manifest.decoder.outputs if o.name != manifest.decoder.alignments]
    decoder = manifest.decoder.model_copy(update={"outputs": outputs, "alignments": None})
    return OnnxModel(work, manifest.encoder, decoder, RuntimeOptions(device="cpu", intra_op_threads=1))


def decode_ms_per_token(model: Bundle, runtime: OnnxModel, sources: list[list[int]], asked: bool) -> float:
    """One greedy decode of exactly NEW_TOKENS tokens per source; wall ms per generated token."""
    special = model.manifest.special_tokens
    sequences = [token_sequence(Greedy(), special.eos, NEW_TOKENS, min_length=NEW_TOKENS,
                                alignment_width=len(s) if asked else None) for s in sources]
    emitted = [0]

    def emit(item: object, finish: object) -> None:
        emitted[0] += item is not None

    for seq in sequences:
        seq.emit = emit
    t0 = time.perf_counter()
    decoder = Decoder(runtime)
    decoder.join(sequences, sources, special.pad, np.full(len(sources), special.bos, dtype=np.int64))
    while decoder.active:
        decoder.step()
    elapsed = time.perf_counter() - t0
    assert emitted[0] == NEW_TOKENS * len(sources)
    return elapsed * 1000 / emitted[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "en-de" / "1")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"

    from seqcast.export.translation.corpus import read_split

    model = open_bundle(args.bundle, RuntimeOptions(device="cpu", intra_op_threads=1))
    assert model.codec is not None
    texts = [p.source for p in read_split(REPO / "data" / "en-de", "test", 400) if len(p.source.split()) >= 5][: max(args.batch)]
    all_sources = model.codec.encode(texts)
    with tempfile.TemporaryDirectory() as work:
        runtimes = {"no output": _without_output(args.bundle, Path(work)), "not asked": model.runtime, "asked": model.runtime}
        lines = [f"| batch | cell | ms / token, median (min) | vs no output, median of {args.rounds} paired rounds |",
                 "|---|---|---|---|"]
        for batch in args.batch:
            sources = all_sources[:batch]
            for cell in CELLS:  # warm-up
                decode_ms_per_token(model, runtimes[cell], sources[:1], cell == "asked")
            times: dict[str, list[float]] = {cell: [] for cell in CELLS}
            for r in range(args.rounds):
                for cell in CELLS[r % 3 :] + CELLS[: r % 3]:
                    times[cell].append(decode_ms_per_token(model, runtimes[cell], sources, cell == "asked"))
                print(f"batch {batch:>2} round {r + 1}: " + ", ".join(f"{c} {times[c][-1]:.3f}" for c in CELLS), file=sys.stderr, flush=True)
            for cell in CELLS:
                ratios = [t / base for t, base in zip(times[cell], times["no output"])]
                lines.append(f"| {batch} | {cell} | {statistics.median(times[cell]):.3f} ({min(times[cell]):.3f}) | "
                             f"{statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f}) |")
    print("\n".join(lines))
    print(f"\n{model.name} v{model.manifest.version}, {NEW_TOKENS} new tokens per row, greedy, one thread; "
          f"command: python bench/alignment_cost.py --bundle {os.path.relpath(args.bundle, REPO)} --rounds {args.rounds} --batch {' '.join(map(str, args.batch))}")


if __name__ == "__main__":
    main()
