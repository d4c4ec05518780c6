"""Starts `seqcast serve` on the bundled models, asks for a demo translation, and stops it."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from seqcast.client import SeqcastClient

DEMO_TEXTS = ["Save changes", "The file could not be opened.", "Delete %(count)s selected items?"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--model-dir", default="models")
    args = parser.parse_args()
    seqcast = Path(sys.executable).with_name("seqcast")
    server = subprocess.Popen(
        [seqcast, "serve", "--model-dir", args.model_dir, "--port", str(args.port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        for line in server.stdout:
            sys.stdout.write(line)
            if m := re.search(r"listening on (\S+)", line):
                target = m.group(1)
                break
        else:
            print("error: the server exited before listening", file=sys.stderr)
            return 1
        with SeqcastClient(target) as client:
            client.wait_ready(30)
            for model in client.list_models():
                print(f"model {model.name} v{model.version}: {model.architecture} on {model.execution_provider}")
            print("\ntranslate (unary):")
            for text, result in zip(DEMO_TEXTS, client.translate(DEMO_TEXTS)):
                print(f"  {text}\n    -> {result.text}")
            print("\ntranslate (streamed, piece by piece):\n  ", end="")
            for chunk in client.translate_stream(DEMO_TEXTS[1]):
                print(chunk.text, end="|", flush=True)
            print()
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
