"""`seqcast`: one command with a subcommand per step (data, train, export, evaluate, serve).

The export-path commands live in `seqcast.export.cli` and import torch only when run, so the
server image (no torch) runs `seqcast serve`. `serve`'s flags are generated from the settings
model (`seqcast.server.settings`), so every setting is a flag, an environment variable and a
TOML key, with one default. The serving runtime is imported only by `serve`, so that in a
client-only install (`pip install seqcast`) every subcommand says which extra it needs instead
of failing with a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from seqcast.export import cli as export_cli

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _missing_extra(error: ModuleNotFoundError) -> str:
    """The missing third-party module; re-raises when seqcast's own module is missing (a bug)."""
    if error.name is None or error.name.split(".")[0] == "seqcast":
        raise error
    return error.name


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve every bundle under --model-dir over gRPC")
    try:
        from seqcast.server.settings import add_flags
    except ModuleNotFoundError as e:  # no server extra: `serve` explains, whatever its flags
        p.set_defaults(missing=_missing_extra(e))  # its flags are unknown then: main lets them pass
        return
    # The log level is the top-level --log-level (before the subcommand), shared with every command.
    add_flags(p, skip=frozenset({"log_level"}))


def _run_serve(args: argparse.Namespace) -> int:
    if getattr(args, "missing", None):
        print(f"error: seqcast serve needs the server extras ({args.missing} is missing): "
              "pip install 'seqcast[server]'", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from seqcast.server.app import serve
    from seqcast.server.settings import from_flags

    try:
        settings = from_flags(args)
        if args.log_level is not None:
            settings = settings.model_copy(update={"log_level": args.log_level})
    except (ValidationError, ValueError) as e:
        print(f"error: invalid settings: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format=_LOG_FORMAT, force=True)
    asyncio.run(serve(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqcast", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default INFO; for serve, the log_level setting)")
    sub = parser.add_subparsers(dest="command", required=True)
    export_cli.add_commands(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "missing", None):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "serve":
        return _run_serve(args)
    logging.basicConfig(level=args.log_level or "INFO", format=_LOG_FORMAT)
    return export_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
