"""Starts `seqcast serve` on the bundled models and answers a demo translation and forecast through it.

`make demo` stops the server afterwards; `make serve` (`--keep-serving`) keeps it running,
relaying its log, until Ctrl-C or SIGTERM, and prints client commands that work as written in any
new shell: absolute paths to this environment's `seqcast-client` and the sample CSV, no
activation needed.
"""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from seqcast.client import SeqcastClient
from seqcast.client.series_csv import read_series_csv

DEMO_TEXTS = ["Save changes", "The file could not be opened.", "Delete %(count)s selected items?"]
# Quarterly overnight trips (thousands) of four Australian regions, 1998-2017 (fpp3 `tourism`).
DEMO_SERIES = Path(__file__).resolve().parents[1] / "data" / "forecast" / "tourism-sample.csv"


def _relay(stream) -> None:  # noqa: ANN001 - a text stream
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()


def _demo(target: str) -> None:
    with SeqcastClient(target) as client:
        client.wait_ready(30)
        for model in client.list_models():
            print(f"model {model.name} v{model.version}: {model.architecture} on {model.execution_provider}")
        print("\ntranslate (unary):")
        for text, result in zip(DEMO_TEXTS, client.translate(DEMO_TEXTS)):
            print(f"  {text}\n    -> {result.text}")
        print("\ntranslate (streamed, pieces separated by |):\n  ", end="")
        for chunk in client.translate_stream(DEMO_TEXTS[1]):
            print(chunk.text, end="|", flush=True)
        print()
        _demo_forecast(client)


def _demo_forecast(client: SeqcastClient) -> None:
    series = read_series_csv(DEMO_SERIES)
    result = client.forecast([s.values for s in series], horizon=4)
    print(f"\nforecast ({result.model}, next 4 quarters: median [10% .. 90%]) of {DEMO_SERIES.name}:")
    for s, f in zip(series, result.forecasts):
        steps = ", ".join(
            f"{p:.0f} [{f.quantiles[0.1][h]:.0f}..{f.quantiles[0.9][h]:.0f}]" if f.quantiles else f"{p:.0f}"
            for h, p in enumerate(f.point)
        )
        print(f"  {s.name:<24} last {s.values[-1]:.0f} -> {steps}")


def client_hints(target: str) -> str:
    """Client commands against `target`, one a line, that run as written from any directory of a
    new shell: this environment's `seqcast-client` and the sample CSV by absolute path."""
    client = shlex.quote(str(Path(sys.executable).absolute().with_name("seqcast-client")))
    csv = shlex.quote(str(DEMO_SERIES))
    commands = [
        'translate "Save changes"',
        'translate --stream "Open the file"',
        f"forecast --csv {csv} --horizon 8",
        f"forecast --csv {csv} --horizon 8 --plot forecast.png",
        "models",
    ]
    return "\n".join(f"  {client} --target {target} {command}" for command in commands)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--metrics-port", type=int, help="port of the server's /metrics, 0 for any free one (default 9464)")
    parser.add_argument("--keep-serving", action="store_true", help="keep the server running after the demo")
    args = parser.parse_args()
    seqcast = Path(sys.executable).absolute().with_name("seqcast")
    metrics = [] if args.metrics_port is None else ["--metrics-port", str(args.metrics_port)]
    server = subprocess.Popen(
        [seqcast, "serve", "--model-dir", args.model_dir, "--port", str(args.port), *metrics],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    # SIGTERM ends this script the way Ctrl-C does, so the server is stopped in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        target = None
        for line in server.stdout:
            sys.stdout.write(line)
            if m := re.search(r"listening on (\S+)", line):
                target = m.group(1)
                break
        if target is None:
            print("error: the server exited before listening (see its log above)", file=sys.stderr)
            return 1
        threading.Thread(target=_relay, args=(server.stdout,), daemon=True).start()
        _demo(target)
        if args.keep_serving:
            print(f"\nserving on {target} until Ctrl-C. From another shell:\n{client_hints(target)}\n", flush=True)
            return server.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
