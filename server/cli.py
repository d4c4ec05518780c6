"""`seqcast serve`: the serving command, registered on the `seqcast` command by `seqcast.export.cli`.

`serve`'s flags are generated from the settings model (`seqcast.server.settings`), so every
setting is a flag, an environment variable and a TOML key, with one default. The serving runtime
is imported only when `serve` runs, so that in a client-only install (`pip install seqcast`) it
says which extra it needs instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _missing_extra(error: ModuleNotFoundError) -> str:
    """The missing third-party module; re-raises when seqcast's own module is missing (a bug)."""
    if error.name is None or error.name.split(".")[0] == "seqcast":
        raise error
    return error.name


def add_serve(sub: argparse._SubParsersAction) -> None:
    """Registers `serve` and its flags (one per setting) on the `seqcast` parser."""
    p = sub.add_parser("serve", help="serve every bundle under --model-dir over gRPC")
    try:
        from seqcast.server.settings import add_flags
    except ModuleNotFoundError as e:  # no server extra: `serve` explains, whatever its flags
        p.set_defaults(missing=_missing_extra(e))  # its flags are unknown then: main lets them pass
        return
    # The log level is the top-level --log-level (before the subcommand), shared with every command.
    add_flags(p, skip=frozenset({"log_level"}))


def run_serve(args: argparse.Namespace) -> int:
    """Serves until SIGTERM or Ctrl-C; 2 when the settings are invalid or the server extra is missing."""
    if getattr(args, "missing", None):
        print(f"error: seqcast serve needs the server extras ({args.missing} is missing): "
              "pip install 'seqcast[server]'", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from seqcast.server.app import serve
    from seqcast.server.models import StartupRefused
    from seqcast.server.settings import from_flags

    try:
        settings = from_flags(args)
        if args.log_level is not None:
            settings = settings.model_copy(update={"log_level": args.log_level})
    except (ValidationError, ValueError) as e:
        print(f"error: invalid settings: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT, force=True)
    try:
        asyncio.run(serve(settings))
    except StartupRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
