"""`seqcast`: one command with a subcommand per step (data, train, export, evaluate, serve).

The export-path commands live in `seqcast.export.cli` and import torch only when run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from seqcast.export import cli as export_cli

SERVER_COMMANDS: set[str] = set()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqcast", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    export_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return export_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
