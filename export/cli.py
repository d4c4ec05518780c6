"""`seqcast`: one command with a subcommand per step (data, train, export, evaluate, serve).

The export-path commands are defined here and import torch only when they run; `serve` comes
from `seqcast.server.cli`. The server image (no torch) runs `seqcast serve` through this module,
and the server package never imports this one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from seqcast.server.cli import LOG_FORMAT, add_serve, run_serve

if TYPE_CHECKING:
    from seqcast.export.config import ForecastConfig
    from seqcast.export.quality import QualityBar

log = logging.getLogger(__name__)

# Modules of the `train` extra (which includes `server`): a command that misses one says which
# extra to install instead of failing with a traceback.
TRAIN_MODULES = frozenset({
    "torch", "onnx", "onnxscript", "sacrebleu", "polib", "sklearn", "tqdm", "pandas", "tsdata", "statsforecast",
    "onnxruntime", "tokenizers", "pydantic", "pydantic_settings", "prometheus_client", "grpc_reflection",
    "transformers", "sentencepiece", "safetensors",
})


def _config_flags(p: argparse.ArgumentParser, config: type, skip: frozenset[str] = frozenset()) -> None:
    """One flag per field of a config dataclass but those in `skip`, typed from its annotation
    (`int | None` takes an int, `bool | None` is --x/--no-x, unset by default)."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        flag, kind = f"--{f.name.replace('_', '-')}", hints[f.name]
        if typing.get_origin(kind) is tuple:
            p.add_argument(flag, type=typing.get_args(kind)[0], nargs="+", default=f.default)
        elif kind is bool or typing.get_args(kind) == (bool, type(None)):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif typing.get_origin(kind) is typing.Literal:
            p.add_argument(flag, choices=typing.get_args(kind), default=f.default)
        else:
            scalar = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
            p.add_argument(flag, type=scalar, default=f.default)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from seqcast.export.config import TrainConfig

    p = sub.add_parser("train", help="train a translation model on a built corpus, a TSV file or two aligned text "
                                     "files (progress bar, dev loss, checkpoints, resume)")
    p.add_argument("--run-dir", type=Path, required=True, help="where checkpoints, tokenizer and metrics go")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pt")
    _config_flags(p, TrainConfig)


def _add_train_forecast(sub: argparse._SubParsersAction) -> None:
    from seqcast.export.config import ForecastConfig

    p = sub.add_parser(
        "train-forecast",
        help="train a forecaster (transformer, LSTM with attention) or fit AR(p) on tourism, vic_elec or your own CSV",
    )
    p.add_argument("--run-dir", type=Path, required=True, help="where the checkpoints, config and metrics go")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pt")
    _config_flags(p, ForecastConfig, skip=frozenset({"data", "csv"}))
    _data_flags(p)


def _data_flags(p: argparse.ArgumentParser) -> None:
    """--data (a built-in task) or --csv FILE with the layout flags of `seqcast-client forecast`."""
    from seqcast.export.config import ForecastData

    data = p.add_argument_group("data", "a built-in task (--data) or the series of a CSV file (--csv)")
    built_in = [name for name in typing.get_args(ForecastData) if name != "csv"]
    data.add_argument("--data", choices=built_in, help="built-in task (default: tourism, unless --csv)")
    data.add_argument("--csv", type=Path, metavar="FILE", help="your own series: the last --horizon values of each are the test window")
    data.add_argument("--column", action="append", default=[], metavar="NAME",
                      help="wide layout: use this column (repeatable; default: every numeric column)")
    data.add_argument("--id-column", metavar="NAME", help="long layout: the column naming each row's series")
    data.add_argument("--value-column", metavar="NAME", help="long layout: the column of values")
    data.add_argument("--time-column", metavar="NAME",
                      help="the column of ISO 8601 time stamps (wide default: the first column of dates)")
    data.add_argument("--frequency", metavar="ALIAS", help="pandas offset alias, e.g. MS, QS, D, h, 30min (default: inferred)")
    data.add_argument("--season-length", type=int, metavar="M", help="steps per season (default: from the frequency, e.g. 12 for monthly)")
    data.add_argument("--horizon", type=int, metavar="H", help="steps to forecast (default: from the frequency, e.g. 18 for monthly)")


def _data_config(args: argparse.Namespace, **fields: object) -> "ForecastConfig":
    """The config of --data or --csv (the CSV's settings inferred where not given), with `fields`."""
    from seqcast.export.config import CsvSource, ForecastConfig
    from seqcast.export.forecast.csv_source import resolve

    csv_only = {"--column": args.column, "--id-column": args.id_column, "--value-column": args.value_column,
                "--time-column": args.time_column, "--frequency": args.frequency,
                "--season-length": args.season_length, "--horizon": args.horizon}
    if args.csv is None:
        given = [flag for flag, value in csv_only.items() if value]
        if given:
            raise ValueError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --csv FILE (a built-in task sets its own)")
        return ForecastConfig(data=args.data or "tourism", **fields)  # type: ignore[arg-type]
    if args.data is not None:
        raise ValueError("give either --data or --csv, not both")
    source = CsvSource(
        str(args.csv.resolve()), tuple(args.column), args.id_column, args.value_column, args.time_column,
        args.frequency, args.season_length, args.horizon,
    )
    return ForecastConfig(data="csv", csv=resolve(source), **fields)  # type: ignore[arg-type]


def _run_train_forecast(args: argparse.Namespace) -> int:
    from seqcast.export.config import ForecastConfig
    from seqcast.export.forecast.train import train_forecaster

    fields = {f.name for f in dataclasses.fields(ForecastConfig)} - {"data", "csv"}
    values = {k: v for k, v in vars(args).items() if k in fields}
    try:
        cfg = _data_config(args, **{**values, "quantile_levels": tuple(values["quantile_levels"])})
        metrics = train_forecaster(cfg, args.run_dir, resume=args.resume)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the CSV file
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(json.dumps({k: metrics[k] for k in ("data", "architecture", "steps", "best_validation_mase")}))
    if cfg.csv is not None:
        _print_scores(cfg, runs=[args.run_dir], json_path=args.run_dir / "test_scores.json")
    return 0


def _print_scores(cfg: "ForecastConfig", bundles: Sequence[Path] = (), runs: Sequence[Path] = (),
                  json_path: Path | None = None, limit: int | None = None) -> None:
    """The test-window table of the baselines and the given bundles and runs on cfg's task."""
    from seqcast.export.forecast.data import forecast_task
    from seqcast.export.forecast.evaluate import as_json, evaluate_forecasts, score_table

    task = forecast_task(cfg)
    n, scores = evaluate_forecasts(task, bundles, runs, limit)
    print(f"{task.name}: {n} test windows of {task.horizon} steps (season {task.season_length})")
    print(score_table(scores))
    if json_path is not None:
        json_path.write_text(json.dumps(as_json(scores), indent=2) + "\n")


def _run_train(args: argparse.Namespace) -> int:
    from seqcast.export.config import TrainConfig
    from seqcast.export.translation.train import train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
        metrics = train(cfg, args.run_dir, resume=args.resume)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"test": metrics["test"], "best_dev_loss": metrics["best_dev_loss"]}))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run (translation or forecast) to an ONNX bundle (parity-checked)")
    p.add_argument("--run-dir", type=Path, required=True, help="training run directory (uses best.pt)")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="bundle root (default: models)")
    p.add_argument("--name", required=True, help="model name, e.g. en-de")
    p.add_argument("--version", default="1")
    p.add_argument("--max-new-tokens", type=int, default=128, help="translation: the most tokens a request may ask for")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed, PyTorch vs ONNX Runtime")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle of that name and version")
    p.add_argument("--precision", choices=["fp32", "int8", "fp16"], default="fp32",
                   help="int8: quantized weights for CPU; fp16: for CUDA only (see `seqcast quantize`)")
    _quality_flags(p)


def _quality_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-chrf-drop", type=float, default=0.5,
                   help="translation: the most chrF points an int8 or fp16 bundle may lose against float32 on the test split")
    p.add_argument("--max-mase-increase", type=float, default=0.01,
                   help="forecast: the most relative MASE increase (0.01 = 1%%) against float32 on the test windows")
    p.add_argument("--quality-limit", type=int, help="score only the first N test sentences or windows")
    p.add_argument("--corpus", type=Path, nargs="+",
                   help="translation corpus whose test split checks parity and quality: a corpus directory or TSV "
                        "file, or two aligned text files (default: the training corpus)")


def _quality_bar(args: argparse.Namespace) -> "QualityBar":
    from seqcast.export.quality import QualityBar

    return QualityBar(max_chrf_drop=args.max_chrf_drop, max_mase_increase=args.max_mase_increase,
                      limit=args.quality_limit, corpus=tuple(args.corpus) if args.corpus else None)


def _run_export(args: argparse.Namespace) -> int:
    from seqcast.export.forecast.bundle import export_forecast_bundle
    from seqcast.export.forecast.train import is_forecast_run
    from seqcast.export.parity import ParityError
    from seqcast.export.precision import export_at_precision
    from seqcast.export.quality import QualityError
    from seqcast.export.translation.bundle import export_bundle

    def export(models_dir: Path) -> Path:
        if is_forecast_run(args.run_dir):
            return export_forecast_bundle(
                args.run_dir, models_dir, args.name, args.version, tolerance=args.tolerance, overwrite=args.overwrite
            )
        return export_bundle(
            args.run_dir, models_dir, args.name, args.version, corpus=args.corpus,
            max_new_tokens=args.max_new_tokens, tolerance=args.tolerance, overwrite=args.overwrite,
        )

    try:
        path = export_at_precision(export, args.models_dir / args.name / args.version, args.precision,
                                   _quality_bar(args), args.overwrite)
    except (ParityError, QualityError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="write an int8 (CPU) or fp16 (CUDA) variant of a float32 bundle, quality-checked against it",
    )
    p.add_argument("bundle", type=Path, help="float32 bundle directory, e.g. models/en-de/1")
    p.add_argument("--precision", choices=["int8", "fp16", "fp32"], default="int8", help="fp32 only with --fuse")
    p.add_argument("--out", type=Path, help="bundle directory to write (default: the model's next version)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    # quantize.INT8_FORMS, spelled out: the CLI imports onnx only when a command runs.
    p.add_argument("--int8-form", choices=["qint8-per-row", "qint8-per-tensor", "qint8-per-channel", "quint8-per-tensor",
                                           "matmulnbits-8bit"], default="qint8-per-row",
                   help="how int8 weights are stored and computed (default: per-row activation scales, so a sentence "
                        "decodes the same whatever shares its batch; the others are the forms measured against it)")
    p.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX Runtime's transformer-optimizer fusions first, for graphs whose attention is written "
                        "out op by op (default: on for such int8 transformers, where the step-time bench measured "
                        "them faster; graphs with one ONNX Attention node per block have nothing to fuse)")
    _quality_flags(p)


def _run_quantize(args: argparse.Namespace) -> int:
    from seqcast.bundle.loading import BundleRefused
    from seqcast.export.precision import next_version_dir, quantize_bundle
    from seqcast.export.quality import QualityError

    out = args.out or next_version_dir(args.bundle)
    try:
        manifest = quantize_bundle(args.bundle, out, args.precision, _quality_bar(args), args.overwrite, args.int8_form, args.fuse)
    except QualityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (FileExistsError, ValueError, BundleRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = manifest.precision
    print(json.dumps({"bundle": str(out), "precision": info.precision, "quantized_ops": info.quantized_ops,
                      "file_sizes": info.file_sizes,
                      "quality": info.quality.model_dump(exclude_none=True) if info.quality else None}))
    return 0


def _add_import_hf(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-hf",
        help="import a local Hugging Face Marian (OPUS-MT) checkpoint directory as a bundle (parity-checked, nothing fetched)",
    )
    p.add_argument("directory", type=Path, help="written by MarianMTModel.save_pretrained and MarianTokenizer.save_pretrained")
    p.add_argument("--name", required=True, help="model name, e.g. opus-en-de")
    p.add_argument("--out", type=Path, default=Path("models"), help="bundle root (default: models)")
    p.add_argument("--version", default="1")
    p.add_argument("--alignment-layer", type=int, help="decoder layer whose cross-attention is the alignments output (default: the penultimate)")
    p.add_argument("--max-new-tokens", type=int, help="the most tokens a request may ask for (default: generation max_length - 1)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed, transformers vs ONNX Runtime")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle of that name and version")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_import_hf(args: argparse.Namespace) -> int:
    from seqcast.export.parity import ParityError
    from seqcast.export.translation.hf_checkpoint import ImportRefused
    from seqcast.export.translation.hf_import import import_marian

    try:
        path = import_marian(
            args.directory, args.out, args.name, args.version, alignment_layer=args.alignment_layer,
            max_new_tokens=args.max_new_tokens, tolerance=args.tolerance, overwrite=args.overwrite,
            show_progress=not args.no_progress,
        )
    except (ImportRefused, ParityError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build the en-de corpus from fetched gettext catalogs and trans-de-en")
    p.add_argument("--sources", type=Path, default=Path(".cache/corpus-sources"), help="filled by scripts/fetch_corpus_sources.sh")
    p.add_argument("--out", type=Path, default=Path("data/en-de"))
    p.add_argument("--seed", type=int, default=0, help="seed of the split by source package")


def _run_data(args: argparse.Namespace) -> int:
    from seqcast.export.translation import data

    return data.main(["--sources", str(args.sources), "--out", str(args.out), "--seed", str(args.seed)])


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="chrF and BLEU of bundles on a corpus split, decoded the way the server does")
    p.add_argument("bundles", type=Path, nargs="*", help="bundle directories, e.g. models/en-de/1")
    p.add_argument("--corpus", type=Path, nargs="+", default=[Path("data/en-de")],
                   help="a corpus directory or TSV file, or two aligned text files (default: data/en-de)")
    p.add_argument("--split", default="test", choices=["dev", "test"])
    p.add_argument("--limit", type=int, help="score only the first N sentences")
    p.add_argument("--baseline", action="store_true", help="also score nearest-neighbour retrieval from the training split")
    p.add_argument("--json", type=Path, help="also write the scores to this file")


def _run_evaluate(args: argparse.Namespace) -> int:
    from seqcast.export.translation.evaluate import evaluate

    scores = evaluate(args.bundles, args.corpus, args.split, args.baseline, args.limit)
    print(f"{args.split} split of {' '.join(map(str, args.corpus))}:")
    print("| system | chrF | BLEU | sentences | seconds |\n|---|---|---|---|---|")
    for s in scores:
        print(s.row())
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(s) for s in scores], indent=2) + "\n")
    return 0


def _add_evaluate_forecast(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-forecast",
        help="MASE, sMAPE and wQL of forecast bundles on held-out test windows, beside SeasonalNaive, AutoETS, "
             "AutoTheta, AutoARIMA and MSTL",
    )
    p.add_argument("bundles", type=Path, nargs="*", help="forecast bundle directories, e.g. models/tourism-transformer/1")
    _data_flags(p)
    p.add_argument("--limit", type=int, help="score only the first N test windows")
    p.add_argument("--json", type=Path, help="also write the scores to this file")


def _run_evaluate_forecast(args: argparse.Namespace) -> int:

    try:
        if args.data is None and args.csv is None:
            raise ValueError("name the test windows: --data tourism|vic_elec or --csv FILE")
        _print_scores(_data_config(args), bundles=args.bundles, json_path=args.json, limit=args.limit)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the CSV file
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registers the export-path subcommands on the `seqcast` parser."""
    _add_data(sub)
    _add_train(sub)
    _add_train_forecast(sub)
    _add_export(sub)
    _add_quantize(sub)
    _add_import_hf(sub)
    _add_evaluate(sub)
    _add_evaluate_forecast(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqcast", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default INFO; for serve, the log_level setting)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "missing", None):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "serve":
        return run_serve(args)
    logging.basicConfig(level=args.log_level or "INFO", format=LOG_FORMAT)
    return run(args)


def run(args: argparse.Namespace) -> int:
    commands = {
        "data": _run_data, "train": _run_train, "train-forecast": _run_train_forecast, "export": _run_export,
        "quantize": _run_quantize, "import-hf": _run_import_hf,
        "evaluate": _run_evaluate, "evaluate-forecast": _run_evaluate_forecast,
    }
    try:
        return commands[args.command](args)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] in TRAIN_MODULES:
            print(f"error: seqcast {args.command} needs the training extras ({e.name} is missing): "
                  "pip install 'seqcast[train]' (in a checkout: pip install -e '.[train]')", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
