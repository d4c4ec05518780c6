"""`seqcast`: one command with a subcommand per step (data, train, export, evaluate, serve).

The export-path commands live in `seqcast.export.cli` and import torch only when run, so the
server image (no torch) runs `seqcast serve`. The serving runtime is imported only by `serve`,
so that in a client-only install (`pip install seqcast`) every subcommand says which extra it
needs instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from seqcast.export import cli as export_cli


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve every bundle under --model-dir over gRPC")
    p.add_argument("--config", type=Path, help="TOML settings file (below flags and SEQCAST_* variables)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port, 0 for any free one (default 50051)")
    p.add_argument("--model-dir", type=Path, help="bundle root (default models)")
    p.add_argument("--default-model", help="translation model for requests that name none")
    p.add_argument("--default-forecast-model", help="forecast model for requests that name none")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--intra-op-threads", type=int)
    p.add_argument("--metrics-port", type=int, help="port of the Prometheus /metrics endpoint, 0 for any free one (default 9464)")
    p.add_argument("--batching", choices=["inflight", "static", "none"], help="scheduling policy (default inflight)")
    p.add_argument("--max-batch-rows", type=int, help="rows decoded together per model (default 256)")
    p.add_argument("--health-port", type=int, help="also serve grpc.health.v1 in plaintext on this port (for probes)")
    p.add_argument("--tls-cert-file", type=Path, help="PEM certificate chain: serve TLS (with --tls-key-file)")
    p.add_argument("--tls-key-file", type=Path, help="PEM private key of --tls-cert-file")
    p.add_argument("--tls-client-ca-file", type=Path, help="PEM CA bundle: require client certificates it signed (mutual TLS)")
    p.add_argument("--drain-seconds", type=float, help="after SIGTERM, how long running calls get to finish (default 10)")


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from pydantic import ValidationError

        from seqcast.server.app import serve
        from seqcast.server.settings import ServerSettings
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "seqcast":
            raise  # a bug in seqcast itself, not a missing extra
        print(f"error: seqcast serve needs the server extras ({e.name} is missing): "
              "pip install 'seqcast[server]'", file=sys.stderr)
        return 2

    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "log_level")}
    try:
        settings = ServerSettings(**flags)
    except (ValidationError, ValueError) as e:
        print(f"error: invalid settings: {e}", file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqcast", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    export_cli.add_commands(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _run_serve(args)
    return export_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
