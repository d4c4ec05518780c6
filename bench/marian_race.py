"""Decode speed of an imported Marian, side by side on identical weights: seqcast, Optimum, CTranslate2, transformers.

A random-weight Marian of opus-mt-en-de's shape (d_model 512, 6+6 layers, 8 heads, ffn 2048,
58,101 ids with `<pad>` last, swish, scaled embeddings, tied output layer) is written the way
`save_pretrained` writes OPUS-MT checkpoints, then:
  * seqcast: `seqcast import-hf`, decoded by the server's numpy loop on `OnnxModel` (greedy);
  * Optimum: `ORTModelForSeq2SeqLM` exported from the same directory (offline), `generate`;
  * CTranslate2: `TransformersConverter`, float32, `translate_batch` greedy;
  * transformers: `MarianMTModel.generate` greedy with its cache;
  * int8: seqcast's default int8 bundle of the imported one (`seqcast quantize`, the quality
    guard opened wide: random weights translate nothing, so chrF says nothing here) against
    CTranslate2 on the same converted model with `compute_type="int8"`.
Every engine runs on one thread. eos gets a logit bias of -30 so that no engine ends early:
every row decodes exactly 64 tokens (eos and pad never win). Each cell (engine x batch) runs in
a fresh process: one full-length decode to warm up, then the median of `--repeats` timed
decodes. Rounds interleave the engines, and the table gives the median ms per
generated token (wall time over all tokens of the batch) with the range over rounds, tokens
per second, the ratio to seqcast (float32) and, for int8, to CTranslate2 int8, and how far the
engine's tokens agree with seqcast's float32 ones (int8 engines are not expected to match them
exactly: rows identical, and the share of positions with the same token).

The cost of alignments: the same bundle with and without the `alignments` output (and the
head-mean feeding it) in decoder.onnx, batch 1 and 16.

Optimum needs transformers 4.x, which conflicts with seqcast's pins: it runs from its own
environment (`make .venv-optimum`, passed as --optimum-python); without it that column is left
out and the reason printed.

    python bench/marian_race.py [--rounds 3] [--batch 1 16] [--work .cache/marian-race]
        [--optimum-python .venv-optimum/bin/python] [--small]
    python bench/marian_race.py --alignment-cost 7      # paired, one process, after a race
    python bench/marian_race.py --small --paired seqcast-int8 ctranslate2-int8 --rounds 3 --repeats 20

`--paired A B` puts two engines in one process and alternates their decodes, so a slow moment of
a shared machine slows both: the ratio it gives moves far less between runs than the race's,
whose cells run seconds apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

NEW_TOKENS = 64
REPO = Path(__file__).resolve().parents[1]
ENGINES = ("seqcast", "optimum", "ctranslate2", "transformers", "seqcast-int8", "ctranslate2-int8")
SHAPES = {
    "opus": dict(d_model=512, heads=8, encoder_layers=6, decoder_layers=6, ffn=2048, vocab_size=58101, spm_vocab=8000),
    "small": dict(d_model=256, heads=4, encoder_layers=3, decoder_layers=3, ffn=1024, vocab_size=8000, spm_vocab=3000),
}


# --- cells: each runs in its own process and prints one JSON line ---------------------------------


def _one_thread() -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


# Each cell builds its engine and returns a function that decodes the batch once, greedy, exactly
# NEW_TOKENS new tokens per row, and returns every row's tokens. `run_cell` calls it once to warm
# up (the same full-length decode, so caches and allocators reach their size) and then times it
# `--repeats` times.


def _cell_seqcast(work: Path, sources: list[list[int]], bundle: str) -> Callable[[], list[list[int]]]:
    from seqcast.bundle.decoding import greedy_decode
    from seqcast.bundle.manifest import Manifest
    from seqcast.bundle.runtime import OnnxModel, RuntimeOptions

    path = work / "models" / bundle / ("2" if bundle.endswith("int8") else "1")
    manifest = Manifest.read(path)
    runtime = OnnxModel.from_manifest(path, manifest, RuntimeOptions(device="cpu", intra_op_threads=1))
    special = manifest.special_tokens

    def decode() -> list[list[int]]:
        out: list[list[int]] = [[] for _ in sources]

        def emit(row: int, token: int | None, finish: object) -> None:
            if token is not None:
                out[row].append(token)

        greedy_decode(runtime, special, sources, [NEW_TOKENS] * len(sources), emit)
        return out

    return decode


def _cell_transformers(work: Path, sources: list[list[int]]) -> Callable[[], list[list[int]]]:
    import torch
    from transformers import MarianMTModel

    torch.set_num_threads(1)
    model = MarianMTModel.from_pretrained(str(work / "checkpoint"), local_files_only=True).eval()
    ids, mask = _padded(sources, model.config.pad_token_id)
    kwargs = dict(do_sample=False, num_beams=1, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS, forced_eos_token_id=None)

    def decode() -> list[list[int]]:
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs)
        return [row[1:] for row in out.tolist()]

    return decode


def _cell_optimum(work: Path, sources: list[list[int]]) -> Callable[[], list[list[int]]]:
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    torch.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    model = ORTModelForSeq2SeqLM.from_pretrained(str(work / "optimum"), session_options=options, local_files_only=True)
    ids, mask = _padded(sources, model.config.pad_token_id)
    kwargs = dict(do_sample=False, num_beams=1, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS, forced_eos_token_id=None)

    def decode() -> list[list[int]]:
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs)
        return [row[1:] for row in out.tolist()]

    return decode


def _cell_ctranslate2(work: Path, sources: list[list[int]], compute_type: str = "float32") -> Callable[[], list[list[int]]]:
    import ctranslate2

    vocab = json.loads((work / "checkpoint" / "vocab.json").read_text())
    pieces = {i: p for p, i in vocab.items()}
    translator = ctranslate2.Translator(str(work / "ctranslate2"), device="cpu", intra_threads=1, inter_threads=1, compute_type=compute_type)
    batch = [[pieces[i] for i in s] for s in sources]
    kwargs = dict(beam_size=1, min_decoding_length=NEW_TOKENS, max_decoding_length=NEW_TOKENS, return_scores=False)

    def decode() -> list[list[int]]:
        return [[vocab[t] for t in r.hypotheses[0]] for r in translator.translate_batch(batch, **kwargs)]

    return decode


def _padded(sources: list[list[int]], pad: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(len(s) for s in sources)
    return [s + [pad] * (width - len(s)) for s in sources], [[1] * len(s) + [0] * (width - len(s)) for s in sources]


def _engine(work: Path, sources: list[list[int]], engine: str) -> Callable[[], list[list[int]]]:
    if engine.startswith("seqcast"):
        bundle = {"seqcast": "opus", "seqcast-noalign": "opus-noalign", "seqcast-int8": "opus-int8"}[engine]
        return _cell_seqcast(work, sources, bundle)
    if engine == "ctranslate2-int8":
        return _cell_ctranslate2(work, sources, "int8")
    return {"transformers": _cell_transformers, "optimum": _cell_optimum, "ctranslate2": _cell_ctranslate2}[engine](work, sources)


def run_cell(args: argparse.Namespace) -> None:
    _one_thread()
    work = Path(args.work)
    sources = json.loads((work / "sources.json").read_text())[: args.cell_batch]
    if args.paired:
        run_pair_cell(work, sources, args.paired, args.repeats)
        return
    decode = _engine(work, sources, args.cell)
    tokens = decode()  # warm-up: the same full-length decode
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        tokens = decode()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": statistics.median(times), "tokens": tokens}))


# --- preparation (once, in this process) --------------------------------------------------------


def prepare(work: Path, shape: str, optimum_python: str | None) -> dict[str, str]:
    """Builds the checkpoint and every engine's model under `work`; returns engines left out and why."""
    from seqcast.export.translation.corpus import read_split
    from seqcast.export.translation.random_marian import RandomMarian, build_random_marian

    skipped: dict[str, str] = {}
    checkpoint = work / "checkpoint"
    if not (checkpoint / "config.json").exists():
        pairs = read_split(REPO / "data" / "en-de", "train", 20000)
        spec = RandomMarian(**SHAPES[shape], max_position_embeddings=512, activation="swish",
                            scale_embedding=True, tie_word_embeddings=True, eos_bias=-30.0, seed=0)
        build_random_marian(checkpoint, [p.source for p in pairs], [p.target for p in pairs], spec)
    from transformers import MarianTokenizer

    tokenizer = MarianTokenizer.from_pretrained(str(checkpoint))
    texts = [p.source for p in read_split(REPO / "data" / "en-de", "test", 200)[100:116]]
    (work / "sources.json").write_text(json.dumps(tokenizer(texts).input_ids))
    if not (work / "models" / "opus" / "1").exists():
        _run([sys.executable, "-m", "seqcast.export.cli", "--log-level", "WARNING", "import-hf", str(checkpoint),
              "--name", "opus", "--out", str(work / "models"), "--overwrite"])
    if not (work / "models" / "opus-noalign" / "1").exists():
        _without_alignments(work / "models" / "opus" / "1", work / "models" / "opus-noalign" / "1")
    int8 = work / "models" / "opus-int8" / "2"
    if not int8.exists():
        # The guard's chrF and log-probabilities compare two random models' outputs: measured and
        # recorded, but not a bar here (trained bundles keep the default bar).
        _run([sys.executable, "-m", "seqcast.export.cli", "--log-level", "WARNING", "quantize", str(work / "models" / "opus" / "1"),
              "--out", str(int8), "--quality-limit", "8", "--max-chrf-drop", "100"])
    if not (work / "ctranslate2" / "model.bin").exists():
        try:
            import ctranslate2.converters

            ctranslate2.converters.TransformersConverter(str(checkpoint)).convert(str(work / "ctranslate2"), force=True)
        except Exception as e:  # missing extra, or a converter that does not take this transformers
            skipped["ctranslate2"] = skipped["ctranslate2-int8"] = f"conversion failed: {type(e).__name__}: {e}"
    if optimum_python is None or not Path(optimum_python).exists():
        skipped["optimum"] = "no Optimum environment (make .venv-optimum)"
    elif not (work / "optimum" / "decoder_model.onnx").exists() and not (work / "optimum" / "decoder_model_merged.onnx").exists():
        code = ("from optimum.onnxruntime import ORTModelForSeq2SeqLM; import sys; "
                "m = ORTModelForSeq2SeqLM.from_pretrained(sys.argv[1], export=True, local_files_only=True); m.save_pretrained(sys.argv[2])")
        result = subprocess.run([optimum_python, "-c", code, str(checkpoint), str(work / "optimum")], capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if result.returncode:
            skipped["optimum"] = "export failed: " + result.stderr.strip().splitlines()[-1]
    return skipped


def _without_alignments(bundle: Path, out: Path) -> None:
    """A copy of the bundle whose decoder graph has no alignments output."""
    import shutil

    import onnx

    from seqcast.bundle.manifest import Manifest
    from seqcast.export.writing import checksums

    from seqcast.export.translation.add_alignments import remove_output

    shutil.copytree(bundle, out)
    onnx.save_model(remove_output(onnx.load(str(out / "decoder.onnx")), "alignments"), str(out / "decoder.onnx"))
    manifest = Manifest.read(out)
    decoder = manifest.decoder.model_copy(update={"outputs": [o for o in manifest.decoder.outputs if o.name != "alignments"], "alignments": None})
    Manifest.model_validate({**manifest.model_dump(), "name": "opus-noalign", "decoder": decoder.model_dump(),
                             "alignment_layer": None, "files": checksums(out)}).write(out)


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed:\n{result.stderr[-2000:]}")
    return result.stdout


# --- the cost of alignments, paired in one process ------------------------------------------------


def alignment_cost(work: Path, batches: list[int], repeats: int) -> str:
    """Whole 64-token greedy decodes with and without the alignments output, alternating
    A, B, A, B in one process so both see the same machine load; median and min ms per token."""
    _one_thread()
    from seqcast.bundle.decoding import greedy_decode
    from seqcast.bundle.manifest import Manifest
    from seqcast.bundle.runtime import OnnxModel, RuntimeOptions

    models = {}
    for name in ("opus", "opus-noalign"):
        path = work / "models" / name / "1"
        models[name] = OnnxModel.from_manifest(path, Manifest.read(path), RuntimeOptions(device="cpu", intra_op_threads=1))
    special = Manifest.read(work / "models" / "opus" / "1").special_tokens
    all_sources = json.loads((work / "sources.json").read_text())
    lines = ["| batch | with alignments, ms / token: median (min) | without: median (min) | cost, medians |", "|---|---|---|---|"]
    for batch in batches:
        sources = all_sources[:batch]
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, runtime in models.items():
                t0 = time.perf_counter()
                greedy_decode(runtime, special, sources, [NEW_TOKENS] * batch, lambda *_: None)
                times[name].append((time.perf_counter() - t0) * 1000 / (NEW_TOKENS * batch))
        a, b = statistics.median(times["opus"]), statistics.median(times["opus-noalign"])
        lines.append(f"| {batch} | {a:.3f} ({min(times['opus']):.3f}) | {b:.3f} ({min(times['opus-noalign']):.3f}) | {100 * (a - b) / b:+.1f}% |")
    return "\n".join(lines) + f"\n\n{repeats} paired repeats per batch, {NEW_TOKENS} new tokens per row, one thread."


# --- two engines paired in one process --------------------------------------------------------


def run_pair_cell(work: Path, sources: list[list[int]], engines: list[str], pairs: int) -> None:
    """Both engines in this process, each warmed up, then `pairs` decodes of each, alternating
    A B, B A, ... so both see the same moments of the machine. Prints each pair's times."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from step_time import alternated_times  # here: the other cells may run where seqcast is not installed

    first, second = (_engine(work, sources, e) for e in engines)
    first(), second()
    print(json.dumps({"times": alternated_times(pairs, first, second).tolist()}))


def paired(args: argparse.Namespace) -> str:
    """Rounds of one fresh process per batch size holding both engines; the speed of the first
    over the second is the second's time over the first's, per pair: median over every pair of
    every round, its interquartile range, and each round's median."""
    a, b = args.paired
    if "optimum" in args.paired:
        raise SystemExit("--paired: optimum runs in its own environment and cannot share a process with another engine")
    work = Path(args.work) / ("small" if args.small else "opus")
    work.mkdir(parents=True, exist_ok=True)
    skipped = prepare(work, "small" if args.small else "opus", args.optimum_python)
    if a in skipped or b in skipped:
        raise SystemExit(f"--paired: {skipped.get(a) or skipped.get(b)}")
    lines = [f"| batch | {a} ms / token | {b} ms / token | speed of {a} over {b}: median (interquartile range) | "
             "median of each round |", "|---|---|---|---|---|"]
    for batch in args.batch:
        rounds: list[list[tuple[float, float]]] = []
        for r in range(args.rounds):
            out = json.loads(_run([sys.executable, __file__, "--cell", "pair", "--paired", a, b, "--cell-batch", str(batch),
                                   "--work", str(work), "--repeats", str(args.repeats)]).strip().splitlines()[-1])
            rounds.append([tuple(t) for t in out["times"]])
            print(f"round {r + 1} batch {batch:>2}: {statistics.median(tb / ta for ta, tb in rounds[-1]):.3f}", file=sys.stderr, flush=True)
        every = [tb / ta for times in rounds for ta, tb in times]
        q1, _, q3 = statistics.quantiles(every, n=4) if len(every) > 1 else (every[0],) * 3
        per_token = 1000 / (NEW_TOKENS * batch)
        ms_a = statistics.median(ta for times in rounds for ta, _ in times) * per_token
        ms_b = statistics.median(tb for times in rounds for _, tb in times) * per_token
        each = ", ".join(f"{statistics.median(tb / ta for ta, tb in times):.2f}" for times in rounds)
        lines.append(f"| {batch} | {ms_a:.3f} | {ms_b:.3f} | **{statistics.median(every):.2f}x** ({q1:.2f}-{q3:.2f}) | {each} |")
    command = (f"python bench/marian_race.py{' --small' if args.small else ''} --paired {a} {b} --rounds {args.rounds} "
               f"--batch {' '.join(map(str, args.batch))} --repeats {args.repeats} --work {args.work}")
    return "\n".join(lines) + (f"\n\n{args.rounds} rounds per batch, each a fresh process holding both engines and alternating "
                               f"their decodes ({args.repeats} pairs, {NEW_TOKENS} new tokens per row, one thread each).\n"
                               f"Command: `{command}`")


# --- the race -----------------------------------------------------------------------------------


def race(args: argparse.Namespace) -> None:
    work = Path(args.work) / ("small" if args.small else "opus")
    work.mkdir(parents=True, exist_ok=True)
    skipped = prepare(work, "small" if args.small else "opus", args.optimum_python)
    engines = [e for e in ENGINES if e not in skipped] + ["seqcast-noalign"]
    times: dict[tuple[str, int], list[float]] = {}
    tokens: dict[tuple[str, int], list[list[int]]] = {}
    for r in range(args.rounds):
        for batch in args.batch:
            for engine in engines if r % 2 == 0 else list(reversed(engines)):
                python = args.optimum_python if engine == "optimum" else sys.executable
                out = json.loads(_run([python, __file__, "--cell", engine, "--cell-batch", str(batch), "--work", str(work),
                                       "--repeats", str(args.repeats)]).strip().splitlines()[-1])
                ms = out["seconds"] * 1000 / (NEW_TOKENS * batch)
                times.setdefault((engine, batch), []).append(ms)
                tokens[(engine, batch)] = out["tokens"]
                print(f"round {r + 1} batch {batch:>2} {engine:>16}: {ms:7.3f} ms/token", file=sys.stderr, flush=True)
    print(table(engines, args.batch, times, tokens, skipped, args))


def _agreement(rows: list[list[int]], reference: list[list[int]]) -> str:
    """Rows identical to the reference's, and the share of positions holding the same token."""
    same = sum(a == b for a, b in zip(rows, reference))
    positions = sum(x == y for a, b in zip(rows, reference) for x, y in zip(a, b))
    return f"{same}/{len(rows)} rows, {positions / sum(len(b) for b in reference):.0%} of tokens"


def table(engines: list[str], batches: list[int], times: dict, tokens: dict, skipped: dict[str, str], args: argparse.Namespace) -> str:
    # "vs seqcast": time per token over seqcast float32's (above 1 is slower); "speed vs CTranslate2
    # int8": its time over the engine's (above 1 is faster), the issue's goal for seqcast int8.
    lines = ["| engine | batch | ms / token, median (range) | tokens / s | vs seqcast | speed vs CTranslate2 int8 | "
             "tokens agree with seqcast's (float32) |", "|---|---|---|---|---|---|---|"]
    for batch in batches:
        base = statistics.median(times[("seqcast", batch)])
        int8_base = statistics.median(times[("ctranslate2-int8", batch)]) if ("ctranslate2-int8", batch) in times else None
        for engine in engines:
            t = times[(engine, batch)]
            med = statistics.median(t)
            rows_ok = all(len(row) == NEW_TOKENS for row in tokens[(engine, batch)])
            vs_int8 = f"{int8_base / med:.2f}x" if int8_base and "int8" in engine else ""
            lines.append(f"| {engine} | {batch} | {med:.3f} ({min(t):.3f}-{max(t):.3f}) | {1000 / med:.0f} | "
                         f"{med / base:.2f}x | {vs_int8} | {_agreement(tokens[(engine, batch)], tokens[('seqcast', batch)])}"
                         f"{'' if rows_ok else ' (not all 64 long)'} |")
    for engine, why in skipped.items():
        lines.append(f"\n{engine} left out: {why}")
    flags = []
    for key, value in vars(args).items():
        if key in ("cell", "cell_batch") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}")
    command = "python bench/marian_race.py " + " ".join(flags)
    return "\n".join(lines) + (f"\n\n{args.rounds} rounds, each cell (a fresh process) the median of {args.repeats} decodes after a "
                               f"full-length warm-up; {NEW_TOKENS} new tokens per row, one thread per engine.\nCommand: `{command}`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed decodes per cell after a full-length warm-up; the cell reports their median")
    parser.add_argument("--work", default=str(REPO / ".cache" / "marian-race"))
    parser.add_argument("--optimum-python", default=str(REPO / ".venv-optimum" / "bin" / "python"))
    parser.add_argument("--small", action="store_true", help="seqcast's own d=256, 3+3 layers, 4 heads, ffn 1024, 8k shape instead")
    parser.add_argument("--alignment-cost", type=int, metavar="REPEATS",
                        help="only the paired with/without alignments comparison, REPEATS decodes each (needs a prepared --work)")
    parser.add_argument("--paired", nargs=2, metavar="ENGINE", choices=[e for e in ENGINES if e != "optimum"] + ["seqcast-noalign"],
                        help="only these two engines, alternating decode by decode in one process per round and batch "
                             "(--repeats pairs each): the ratio the machine's load moves least")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--cell-batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        run_cell(args)
    elif args.paired:
        print(paired(args))
    elif args.alignment_cost:
        print(alignment_cost(Path(args.work) / ("small" if args.small else "opus"), args.batch, args.alignment_cost))
    else:
        race(args)


if __name__ == "__main__":
    main()
