"""`seqcast-client`: translate, forecast, list models, check health and load-test a seqcast server.

A thin front end over `seqcast.client.SeqcastClient`; the only place in the client that prints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import grpc

from seqcast.client.client import (
    DEFAULT_TARGET,
    Alignments,
    ForecastResult,
    SeqcastClient,
    SeqcastError,
    SeriesForecast,
    Tls,
    Translation,
    TranslationChunk,
)
from seqcast.client.loadgen import DEFAULT_TEXTS, LoadSummary, Progress, run_load
from seqcast.client.plot import MatplotlibMissingError, plot_alignments, plot_forecasts, require_matplotlib
from seqcast.client.series_csv import NamedSeries, read_series_csv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqcast-client", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("SEQCAST_TARGET", DEFAULT_TARGET),
        help="server address (default: $SEQCAST_TARGET or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="deadline per call, in seconds")
    tls = parser.add_argument_group("TLS", "plaintext unless one of these is given")
    tls.add_argument("--tls", action="store_true", help="TLS, trusting the system's root certificates")
    tls.add_argument("--ca-file", type=Path, metavar="PEM", help="TLS, trusting this CA for the server's certificate")
    tls.add_argument("--cert-file", type=Path, metavar="PEM", help="client certificate, for mutual TLS (with --key-file)")
    tls.add_argument("--key-file", type=Path, metavar="PEM", help="the client certificate's private key")
    tls.add_argument("--server-name", metavar="NAME", help="name to check the server's certificate against")
    sub = parser.add_subparsers(dest="command", required=True)

    translate = sub.add_parser("translate", help="translate texts, one output line per text")
    translate.add_argument("--model", default="", help="model name (default: the server's default)")
    translate.add_argument("--max-new-tokens", type=_positive_int, default=None)
    translate.add_argument("--min-new-tokens", type=_positive_int, default=None,
                           help="hold back end-of-sequence until this many tokens were generated")
    translate.add_argument("--stream", action="store_true", help="print pieces as they are decoded")
    translate.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of results (with --stream: one JSON object per chunk and line)",
    )
    translate.add_argument(
        "--alignments", action="store_true",
        help="also print each text's word alignments: a table of output tokens (rows) by source tokens "
        "(columns), weights in percent (with --json: in the JSON)",
    )
    translate.add_argument(
        "--plot-alignments", type=Path, metavar="FILE", help="also draw the alignments as heatmaps into this PNG"
    )
    translate.add_argument("texts", nargs="+", metavar="TEXT", help="texts; '-' reads one per line from stdin")

    forecast = sub.add_parser("forecast", help="forecast the series of a CSV file, one table per series")
    forecast.add_argument("--model", default="", help="model name (default: the server's default forecast model)")
    forecast.add_argument("--csv", required=True, type=Path, metavar="FILE", help="the series to forecast")
    forecast.add_argument("--horizon", required=True, type=_positive_int, metavar="STEPS", help="steps ahead")
    layout = forecast.add_argument_group(
        "CSV layout",
        "wide (default): a header row, then one numeric column per series and optionally a column of "
        "ISO 8601 time stamps; long (--id-column and --value-column): one row per series and time step",
    )
    layout.add_argument(
        "--column", action="append", default=[], metavar="NAME",
        help="wide: forecast this column (repeatable; default: every numeric column)",
    )
    layout.add_argument("--id-column", metavar="NAME", help="long: the column naming each row's series")
    layout.add_argument("--value-column", metavar="NAME", help="long: the column of values")
    layout.add_argument(
        "--time-column", metavar="NAME",
        help="the column of ISO 8601 time stamps (wide default: the first column of dates; long: sorts each series)",
    )
    forecast.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    forecast.add_argument("--plot", type=Path, metavar="FILE", help="also draw history and forecasts into this PNG")
    # SUPPRESS: unset here must not override a global --timeout given before the command.
    forecast.add_argument(
        "--timeout", type=float, default=argparse.SUPPRESS, metavar="SECONDS", help="deadline of the call, in seconds"
    )

    sub.add_parser("models", help="list the loaded models")

    health = sub.add_parser("health", help="print the serving status; exit 1 unless SERVING")
    health.add_argument("service", nargs="?", default="", help="service name (default: the whole server)")

    bench = sub.add_parser(
        "bench",
        help="stream translations from N concurrent clients for T seconds; print throughput and latency",
        description="Each client has its own connection and sends one streaming request after another. "
        "Exits 1 when no request after the warm-up succeeded. The global --timeout is each request's deadline.",
    )
    bench.add_argument("--concurrency", required=True, type=_positive_int, metavar="N", help="concurrent clients")
    bench.add_argument(
        "--duration", required=True, type=_positive_float, metavar="SECONDS", help="stop sending new requests after this long"
    )
    bench.add_argument("--model", default="", help="model name (default: the server's default)")
    bench.add_argument("--max-new-tokens", type=_positive_int, default=None)
    bench.add_argument("--min-new-tokens", type=_positive_int, default=None,
                       help="hold back end-of-sequence until this many tokens (equal to --max-new-tokens: exact lengths)")
    bench.add_argument(
        "--texts", type=Path, metavar="FILE",
        help=f"texts to send round robin, one per line (default: {len(DEFAULT_TEXTS)} built-in UI strings)",
    )
    bench.add_argument(
        "--warmup", type=_non_negative_float, default=0.0, metavar="SECONDS",
        help="leave requests started in the first SECONDS out of the statistics (default: %(default)g)",
    )
    bench.add_argument("--max-requests", type=_positive_int, metavar="R", help="also stop sending after R requests in all")
    bench.add_argument(
        "--drain", type=_non_negative_float, default=30.0, metavar="SECONDS",
        help="wait this long for requests in flight when sending stops, then cancel them (default: %(default)g)",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    bench.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "translate" and args.texts == ["-"]:
        args.texts = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
        if not args.texts:
            parser.error("no texts on stdin")
    try:
        tls = _tls(args)
    except ValueError as e:  # a missing file, or a certificate without its key
        parser.error(f"TLS: {e}")
    try:
        with SeqcastClient(args.target, tls=tls) as client:
            return COMMANDS[args.command](client, args)
    except SeqcastError as e:
        if e.code == grpc.StatusCode.UNAVAILABLE:
            print(
                f"error: cannot reach a seqcast server at {args.target} ({e}).\n"
                "Is it running? Start one with `make serve`, or pass --target / set SEQCAST_TARGET.",
                file=sys.stderr,
            )
        else:
            print(f"error: {e}", file=sys.stderr)
        return 1


def _translate(client: SeqcastClient, args: argparse.Namespace) -> int:
    problem = _alignments_usage_problem(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    options = dict(model=args.model, max_new_tokens=args.max_new_tokens, timeout=args.timeout,
                   min_new_tokens=args.min_new_tokens, alignments=args.alignments or args.plot_alignments is not None)
    if args.stream:
        chunks = client.translate_stream(args.texts, **options)
        if args.json:
            for chunk in chunks:
                print(json.dumps(_as_json(chunk), ensure_ascii=False), flush=True)
            return 0
        printed = _print_in_order(chunks, sys.stdout)
        if printed < len(args.texts):
            print(f"error: the stream ended before texts[{printed}] finished", file=sys.stderr)
            return 1
        return 0
    results = client.translate(args.texts, **options)
    if args.json:
        print(json.dumps([_as_json(r) for r in results], ensure_ascii=False, indent=2))
    else:
        for result in results:
            print(result.text)
            if args.alignments and result.alignments is not None:
                print(format_alignments(result.alignments))  # and a blank line
    if args.plot_alignments is not None:
        return _plot_alignments(args.texts, results, args.plot_alignments)
    return 0


def _as_json(record: Translation | TranslationChunk) -> dict[str, Any]:
    """A result or chunk as JSON, its `alignments` left out unless they were asked for."""
    fields = asdict(record)
    if fields["alignments"] is None:
        del fields["alignments"]
    return fields


def _alignments_usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the alignment flags, checked before the server is called."""
    if args.stream and (args.plot_alignments is not None or (args.alignments and not args.json)):
        return "--alignments prints and --plot-alignments draws whole texts: leave out --stream (or, for --alignments, add --json)"
    if args.plot_alignments is not None:
        return _plot_problem("--plot-alignments", args.plot_alignments)
    return None


def _plot_problem(flag: str, path: Path) -> str | None:
    """What stops a plot flag from writing `path`: no matplotlib, or no such directory."""
    try:
        require_matplotlib()
    except MatplotlibMissingError as e:
        return f"{flag}: {e}"
    if not path.parent.is_dir():
        return f"{flag}: directory {path.parent} does not exist"
    return None


def format_alignments(alignments: Alignments) -> str:
    """A table of the output tokens (rows) by the source tokens (columns), weights in whole
    percent; each row's largest weight is marked with *."""
    header = ["", *alignments.source_tokens]
    rows = []
    for token, weights in zip(alignments.target_tokens, alignments.weights):
        top = max(range(len(weights)), key=weights.__getitem__, default=-1)
        rows.append([token, *(f"{round(100 * w)}{'*' if i == top else ' '}" for i, w in enumerate(weights))])
    lines = _table(header, rows, right_aligned=range(1, len(header)))
    return "".join("  " + line + "\n" for line in lines)


def _plot_alignments(texts: Sequence[str], results: Sequence[Translation], path: Path) -> int:
    try:
        plot_alignments(texts, results, path)
    except (OSError, ValueError) as e:  # e.g. a read-only directory or an unknown image suffix
        print(f"error: cannot write the plot to {path}: {e}", file=sys.stderr)
        return 1
    print(f"wrote the alignments plot to {path}", file=sys.stderr)
    return 0


def _print_in_order(chunks: Iterable[TranslationChunk], out: TextIO) -> int:
    """Prints each text's pieces on its own line, in request order; returns how many lines finished.

    The text whose turn it is prints live; pieces of later texts wait in `pending` until every
    earlier text has finished, then print at once.
    """
    pending: dict[int, list[str]] = {}
    finished: set[int] = set()
    current = 0
    for chunk in chunks:
        if chunk.index == current:
            out.write(chunk.text)
        else:
            pending.setdefault(chunk.index, []).append(chunk.text)
        if chunk.finish_reason is not None:
            finished.add(chunk.index)
        while current in finished:
            out.write("\n")
            current += 1
            out.write("".join(pending.pop(current, [])))
        out.flush()
    return current


def _forecast(client: SeqcastClient, args: argparse.Namespace) -> int:
    problem = _forecast_usage_problem(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        series = read_series_csv(
            args.csv, args.column, id_column=args.id_column, value_column=args.value_column,
            time_column=args.time_column,
        )
    except OSError as e:
        print(f"error: cannot read {args.csv}: {e.strerror or e}", file=sys.stderr)
        return 2
    except ValueError as e:  # SeriesCsvError: names the file, line and column
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = client.forecast([s.values for s in series], args.horizon, model=args.model, timeout=args.timeout)
    if args.json:
        print(json.dumps(forecasts_json(series, result), indent=2))
    else:
        print(format_forecasts(series, result), end="")
    if args.plot is not None:
        try:
            plot_forecasts(series, result, args.plot)
        except (OSError, ValueError) as e:  # e.g. a read-only directory or an unknown image suffix
            print(f"error: cannot write the plot to {args.plot}: {e}", file=sys.stderr)
            return 1
        print(f"wrote the plot to {args.plot}", file=sys.stderr)  # stderr: stdout stays pure JSON
    return 0


def _forecast_usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the forecast flags, checked before the file is read and the server called."""
    if (args.id_column is None) != (args.value_column is None):
        return "the long layout needs both --id-column and --value-column"
    if args.id_column is not None and args.column:
        return "--column selects columns of the wide layout; with --id-column every series in the file is forecast"
    if args.plot is not None:
        return _plot_problem("--plot", args.plot)
    return None


def forecasts_json(series: Sequence[NamedSeries], result: ForecastResult) -> dict[str, Any]:
    """The `--json` output: the model, what `point` is, and per series its forecast and time stamps.

    Quantile levels are the keys of `quantiles`, as strings ("0.1"); `times` is null when the CSV
    had no time stamps.
    """
    return {
        "model": result.model,
        "model_version": result.model_version,
        "point": result.point,
        "series": [
            {
                "name": s.name,
                "context_used": f.context_used,
                "times": _iso_times(s.future_times(len(f.point))),
                "point": f.point,
                "quantiles": {str(level): values for level, values in f.quantiles.items()},
            }
            for s, f in zip(series, result.forecasts, strict=True)
        ],
    }


def format_forecasts(series: Sequence[NamedSeries], result: ForecastResult) -> str:
    """The default output: a line naming the model, then one table per series (step, time, point, quantiles)."""
    blocks = [f"model {result.model} (version {result.model_version}); POINT is the {result.point}\n"]
    for s, f in zip(series, result.forecasts, strict=True):
        blocks.append(f"{s.name} ({f.context_used} values used)\n" + _forecast_table(f, s.future_times(len(f.point))))
    return "\n".join(blocks)


def _forecast_table(f: SeriesForecast, times: list[datetime] | None) -> str:
    digits = _decimals([*f.point, *(v for values in f.quantiles.values() for v in values)])
    header = ["STEP", *(["TIME"] if times is not None else []), "POINT", *(f"Q{level:g}" for level in f.quantiles)]
    stamps = _iso_times(times, sep=" ")
    rows = [
        [
            str(step + 1),
            *([stamps[step]] if stamps is not None else []),
            f"{f.point[step]:.{digits}f}",
            *(f"{values[step]:.{digits}f}" for values in f.quantiles.values()),
        ]
        for step in range(len(f.point))
    ]
    numbers = [i for i, name in enumerate(header) if name != "TIME"]
    return "".join(line + "\n" for line in _table(header, rows, right_aligned=numbers))


def _decimals(values: Sequence[float]) -> int:
    """Decimals that show five significant digits of the largest value (0 to 6), for aligned columns."""
    scale = max((abs(v) for v in values), default=0.0)
    if scale == 0 or not math.isfinite(scale):
        return 2
    return min(6, max(0, 4 - math.floor(math.log10(scale))))


def _iso_times(times: list[datetime] | None, sep: str = "T") -> list[str] | None:
    """ISO 8601 strings, dates only when every time stamp is a midnight without a time zone."""
    if times is None:
        return None
    if all(t.tzinfo is None and t.time() == datetime.min.time() for t in times):
        return [t.date().isoformat() for t in times]
    return [t.isoformat(sep=sep) for t in times]


def _models(client: SeqcastClient, args: argparse.Namespace) -> int:
    models = client.list_models(timeout=args.timeout)
    header = ["NAME", "VERSION", "TASK", "ARCHITECTURE", "PROVIDER", "MAX SOURCE", "MAX NEW"]
    rows = [
        [
            m.name + (" *" if m.is_default else ""),
            m.version,
            m.task,
            m.architecture,
            m.execution_provider,
            str(m.max_source_tokens) if m.forecast is None else "-",
            str(m.max_new_tokens) if m.forecast is None else "-",
        ]
        for m in models
    ]
    for line in _table(header, rows):
        print(line)
    forecasters = [(m.name, m.forecast) for m in models if m.forecast is not None]
    if forecasters:
        print()
        header = ["FORECAST MODEL", "CONTEXT", "MIN CONTEXT", "MAX HORIZON", "POINT", "LEVELS", "FREQUENCY", "SEASON"]
        rows = [
            [
                name,
                str(info.context_length),
                str(info.min_context),
                str(info.max_horizon),
                info.point,
                ",".join(f"{level:g}" for level in info.quantile_levels) or "-",
                info.frequency or "-",
                str(info.season_length),
            ]
            for name, info in forecasters
        ]
        for line in _table(header, rows):
            print(line)
    default_tasks = list(dict.fromkeys(m.task for m in models if m.is_default))
    if len(default_tasks) == 1:
        print(f"* default {default_tasks[0]} model")
    elif default_tasks:
        print(f"* default model of its task ({', '.join(default_tasks)})")
    return 0


def _table(header: list[str], rows: list[list[str]], right_aligned: Iterable[int] = ()) -> list[str]:
    """Lines of a table with two spaces between columns, left-aligned but for `right_aligned` ones."""
    right = set(right_aligned)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def _health(client: SeqcastClient, args: argparse.Namespace) -> int:
    status = client.health(args.service, timeout=args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


def _bench(client: SeqcastClient, args: argparse.Namespace) -> int:
    if args.warmup >= args.duration:
        print(f"error: --warmup ({args.warmup:g} s) must be shorter than --duration ({args.duration:g} s)", file=sys.stderr)
        return 2
    texts = list(DEFAULT_TEXTS)
    if args.texts is not None:
        try:
            texts = [line.strip() for line in args.texts.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as e:
            print(f"error: cannot read {args.texts}: {e.strerror or e}", file=sys.stderr)
            return 2
        if not texts:
            print(f"error: {args.texts} has no texts", file=sys.stderr)
            return 2
    # One request first: a wrong model or an unreachable server fails here, with its message,
    # rather than as a run full of errors.
    client.translate(texts[0], model=args.model, max_new_tokens=1, timeout=args.timeout)
    summary = run_load(
        args.target, args.concurrency, args.duration, model=args.model, max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens, texts=texts, warmup=args.warmup, max_requests=args.max_requests, timeout=args.timeout,
        drain_timeout=args.drain, on_progress=None if args.quiet else _print_progress, tls=client.tls,
    )
    if args.json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        print(format_load_summary(summary), end="")
    if summary.window_s == 0:
        print("error: sending stopped before the warm-up ended; lower --warmup or raise --max-requests", file=sys.stderr)
    return 0 if summary.completed > 0 else 1


def _tls(args: argparse.Namespace) -> Tls | None:
    if not (args.tls or args.ca_file or args.cert_file or args.server_name):
        return None
    return Tls(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file, server_name=args.server_name)


def _print_progress(p: Progress) -> None:
    print(f"{p.elapsed:6.1f} s  {p.finished} requests  {p.errors} errors  {p.in_flight} in flight", file=sys.stderr)


def format_load_summary(s: LoadSummary) -> str:
    """The default `bench` output: the run's counts and throughput, then a table of latencies."""

    def rate(value: float | None, unit: str) -> str:
        return "-" if value is None else f"{value:.1f} {unit}"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    errors = ", ".join(f"{name} {count}" for name, count in s.errors.items()) or "none"
    facts = [
        ("concurrency", str(s.concurrency)),
        ("window", f"{s.window_s:.1f} s after {s.window_start_s:g} s of warm-up ({s.warmup_requests} requests left out)"),
        ("completed", f"{s.completed} requests"),
        ("errors", errors),
        ("throughput", f"{rate(s.requests_per_s, 'requests/s')}, {rate(s.output_tokens_per_s, 'output tokens/s')}"),
    ]
    width = max(len(name) for name, _ in facts)
    lines = [f"{name.ljust(width)}  {value}" for name, value in facts]
    header = ["LATENCY (ms)", "P50", "P90", "P99"]
    rows = [
        ["time to first token", ms(s.ttft_p50_ms), ms(s.ttft_p90_ms), ms(s.ttft_p99_ms)],
        ["inter-token", ms(s.itl_p50_ms), "", ms(s.itl_p99_ms)],
        ["end to end", ms(s.e2e_p50_ms), "", ms(s.e2e_p99_ms)],
    ]
    lines += ["", *_table(header, rows, right_aligned=[1, 2, 3])]
    return "".join(line + "\n" for line in lines)


def _positive_float(value: str) -> float:
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not (number >= 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


COMMANDS = {"translate": _translate, "forecast": _forecast, "models": _models, "health": _health, "bench": _bench}

if __name__ == "__main__":
    sys.exit(main())
