"""`seqcast data|train|export|evaluate`: the export path's command-line front end.

Commands import torch only when they run, so `seqcast serve` works without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import get_args

log = logging.getLogger(__name__)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from seqcast.export.train import TrainConfig  # light: dataclass + torch import deferred below

    p = sub.add_parser("train", help="train a translation model (progress bar, dev loss, checkpoints, resume)")
    p.add_argument("--run-dir", type=Path, required=True, help="where checkpoints, tokenizer and metrics go")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pt")
    for f in dataclasses.fields(TrainConfig):
        kind = f.type if isinstance(f.type, type) else str
        if f.name == "architecture":
            p.add_argument("--architecture", choices=["transformer", "gru-attention"], default=f.default)
            continue
        if f.name in ("train_limit", "test_limit"):
            kind = int
        if f.name == "bf16":
            p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=f.default)
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", type=_FIELD_TYPES.get(f.name, kind), default=f.default)


_FIELD_TYPES = {
    "corpus": str, "vocab_size": int, "d_model": int, "n_heads": int, "layers": int, "d_ff": int, "dropout": float,
    "max_tokens": int, "steps": int, "batch_tokens": int, "lr": float, "warmup_steps": int,
    "label_smoothing": float, "weight_decay": float, "clip_norm": float, "seed": int, "eval_every": int,
    "checkpoint_every": int, "train_limit": int, "test_limit": int, "threads": int,
}


def _run_train(args: argparse.Namespace) -> int:
    from seqcast.export.train import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    metrics = train(cfg, args.run_dir, resume=args.resume)
    print(json.dumps({"test": metrics["test"], "best_dev_loss": metrics["best_dev_loss"]}))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run to an ONNX bundle (parity-checked)")
    p.add_argument("--run-dir", type=Path, required=True, help="training run directory (uses best.pt)")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="bundle root (default: models)")
    p.add_argument("--name", required=True, help="model name, e.g. en-de")
    p.add_argument("--version", default="1")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed, PyTorch vs ONNX Runtime")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle of that name and version")


def _run_export(args: argparse.Namespace) -> int:
    from seqcast.export.bundle import export_bundle
    from seqcast.export.parity import ParityError

    try:
        path = export_bundle(
            args.run_dir, args.models_dir, args.name, args.version,
            max_new_tokens=args.max_new_tokens, tolerance=args.tolerance, overwrite=args.overwrite,
        )
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registers the export-path subcommands on the `seqcast` parser."""
    _add_train(sub)
    _add_export(sub)


def run(args: argparse.Namespace) -> int:
    return {"train": _run_train, "export": _run_export}[args.command](args)
