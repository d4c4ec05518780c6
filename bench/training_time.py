"""Training time per model, side by side in one run: seconds per training step of every model at
its documented settings, and the time the documented run takes at that pace.

Each cell is a fresh process running the real command (`seqcast train` or
`seqcast train-forecast`) twice, for a short and a longer run, and takes the difference of the
training loop's own clock (`seconds` in metrics.json): what is left is the cost of the extra
steps alone, without start-up, data loading, the tokenizer or the one validation at the end.
Rounds interleave the models. Translation cells train on the first 20,000 training pairs (the
per-step cost depends on the batch size in tokens, not on the size of the corpus). The transformer
is also timed with bf16 autocast, so the table shows what `--bf16` costs or saves on this CPU (on
one without native bf16 a step takes long enough that 1 and 3 steps are timed).

    python bench/training_time.py [--rounds 3] [--only tourism-lstm-dot ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Model:
    name: str
    command: str  # "train" or "train-forecast"
    flags: tuple[str, ...]  # the documented settings
    steps: int  # steps of the documented run
    short: int  # steps of the two timed runs
    long: int


_EN_DE = ("--train-limit", "20000", "--test-limit", "1", "--threads", "2")
MODELS = [
    Model("en-de (transformer, bf16)", "train",
          ("--batch-tokens", "5000", "--warmup-steps", "400", "--lr", "1e-3", "--bf16", *_EN_DE), 2200, 1, 3),
    Model("en-de (transformer, float32)", "train",
          ("--batch-tokens", "5000", "--warmup-steps", "400", "--lr", "1e-3", "--no-bf16", *_EN_DE), 2200, 2, 6),
    Model("en-de-gru (float32)", "train",
          ("--architecture", "gru-attention", "--batch-tokens", "4000", "--warmup-steps", "300", "--lr", "2e-3",
           "--dropout", "0.2", "--no-bf16", *_EN_DE), 1500, 2, 6),
    Model("tourism (transformer)", "train-forecast",
          ("--data", "tourism", "--architecture", "transformer", "--lr", "1e-3", "--free-running", "0.5", "--threads", "1"),
          2500, 20, 120),
    Model("tourism-lstm-dot", "train-forecast",
          ("--data", "tourism", "--architecture", "lstm-dot", "--lr", "1e-3", "--threads", "1"), 2500, 20, 120),
    Model("tourism-lstm-additive", "train-forecast",
          ("--data", "tourism", "--architecture", "lstm-additive", "--lr", "1e-3", "--threads", "1"), 2500, 20, 120),
    Model("tourism-lstm-theta (LSTM + Theta blend)", "train-forecast",
          ("--data", "tourism", "--architecture", "lstm-dot", "--theta-weight", "0.5", "--lr", "1e-3", "--threads", "1"),
          2500, 20, 120),
    Model("vic-elec (transformer)", "train-forecast",
          ("--data", "vic_elec", "--architecture", "transformer", "--batch-size", "32", "--lr", "1e-3", "--threads", "1"),
          1000, 10, 60),
    Model("vic-elec-lstm-dot", "train-forecast",
          ("--data", "vic_elec", "--architecture", "lstm-dot", "--batch-size", "32", "--lr", "1e-3", "--threads", "1"),
          1000, 10, 60),
    Model("vic-elec-mlp (3-member MLP ensemble)", "train-forecast",
          ("--data", "vic_elec", "--architecture", "mlp", "--layers", "2", "--d-model", "256", "--dropout", "0.1",
           "--members", "3", "--lookbacks", "336", "672", "1008", "--lr", "1e-3", "--threads", "1"), 2000, 20, 120),
]


def _train_seconds(model: Model, steps: int, work: Path) -> float:
    run = work / f"run-{steps}"
    command = [sys.executable, "-m", "seqcast.export.cli", "--log-level", "WARNING", model.command, "--run-dir", str(run),
               *model.flags, "--steps", str(steps), "--eval-every", str(steps), "--checkpoint-every", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return float(json.loads((run / "metrics.json").read_text())["seconds"])


def cell(model: Model) -> float:
    """Seconds per step of one model, in this (fresh) process's children."""
    with tempfile.TemporaryDirectory() as tmp:
        short = _train_seconds(model, model.short, Path(tmp))
        long = _train_seconds(model, model.long, Path(tmp))
    return (long - short) / (model.long - model.short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=[m.name for m in MODELS], metavar="MODEL",
                        help=f"models to time, by their name in the table: {', '.join(m.name for m in MODELS)}")
    args = parser.parse_args()
    models = [m for m in MODELS if not args.only or m.name in args.only]
    times: dict[str, list[float]] = {m.name: [] for m in models}
    for round_ in range(args.rounds):
        for model in models if round_ % 2 == 0 else reversed(models):
            times[model.name].append(cell(model))
            print(f"round {round_ + 1}: {model.name}: {times[model.name][-1] * 1000:.1f} ms/step", file=sys.stderr, flush=True)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; `python bench/training_time.py "
          f"--rounds {args.rounds}`; median (min-max) of {args.rounds} interleaved rounds\n")
    print("| model | ms per step | documented steps | documented run |\n|---|---|---|---|")
    for model in models:
        ms = [t * 1000 for t in times[model.name]]
        median = statistics.median(ms)
        total = median * model.steps / 1000
        print(f"| {model.name} | {median:.1f} ({min(ms):.1f}-{max(ms):.1f}) | {model.steps} | "
              f"{total / 60:.1f} min |" if total >= 60 else f"| {model.name} | {median:.1f} ({min(ms):.1f}-{max(ms):.1f}) | "
              f"{model.steps} | {total:.0f} s |")


if __name__ == "__main__":
    main()
