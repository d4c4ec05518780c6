"""`seqcast-client`: translate, list models and check health against a seqcast server.

A thin front end over `seqcast.client.SeqcastClient`; the only place in the client that prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict
from typing import TextIO

import grpc

from seqcast.client.client import DEFAULT_TARGET, SeqcastClient, SeqcastError, TranslationChunk


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqcast-client", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("SEQCAST_TARGET", DEFAULT_TARGET),
        help="server address (default: $SEQCAST_TARGET or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="deadline per call, in seconds")
    sub = parser.add_subparsers(dest="command", required=True)

    translate = sub.add_parser("translate", help="translate texts, one output line per text")
    translate.add_argument("--model", default="", help="model name (default: the server's default)")
    translate.add_argument("--max-new-tokens", type=_positive_int, default=None)
    translate.add_argument("--stream", action="store_true", help="print pieces as they are decoded")
    translate.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of results (with --stream: one JSON object per chunk and line)",
    )
    translate.add_argument("texts", nargs="+", metavar="TEXT", help="texts; '-' reads one per line from stdin")

    sub.add_parser("models", help="list the loaded models")

    health = sub.add_parser("health", help="print the serving status; exit 1 unless SERVING")
    health.add_argument("service", nargs="?", default="", help="service name (default: the whole server)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "translate" and args.texts == ["-"]:
        args.texts = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
        if not args.texts:
            parser.error("no texts on stdin")
    try:
        with SeqcastClient(args.target) as client:
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
    options = dict(model=args.model, max_new_tokens=args.max_new_tokens, timeout=args.timeout)
    if args.stream:
        chunks = client.translate_stream(args.texts, **options)
        if args.json:
            for chunk in chunks:
                print(json.dumps(asdict(chunk), ensure_ascii=False), flush=True)
            return 0
        printed = _print_in_order(chunks, sys.stdout)
        if printed < len(args.texts):
            print(f"error: the stream ended before texts[{printed}] finished", file=sys.stderr)
            return 1
        return 0
    results = client.translate(args.texts, **options)
    if args.json:
        print(json.dumps([asdict(r) for r in results], ensure_ascii=False, indent=2))
    else:
        for result in results:
            print(result.text)
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


def _models(client: SeqcastClient, args: argparse.Namespace) -> int:
    models = client.list_models(timeout=args.timeout)
    header = ("NAME", "VERSION", "TASK", "ARCHITECTURE", "PROVIDER", "MAX SOURCE", "MAX NEW")
    rows = [
        (
            m.name + (" *" if m.is_default else ""),
            m.version,
            m.task,
            m.architecture,
            m.execution_provider,
            str(m.max_source_tokens),
            str(m.max_new_tokens),
        )
        for m in models
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if any(m.is_default for m in models):
        print("* default translation model")
    return 0


def _health(client: SeqcastClient, args: argparse.Namespace) -> int:
    status = client.health(args.service, timeout=args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


COMMANDS = {"translate": _translate, "models": _models, "health": _health}

if __name__ == "__main__":
    sys.exit(main())
