"""`seqcast serve` in its own process, as the benchmarks drive it: a model directory of the
committed bundles, the server's start-up lines and address, and its resident memory."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def committed_models(*names: str) -> Path:
    """A fresh model directory linking the committed bundles `names` (models/<name>/)."""
    models = Path(tempfile.mkdtemp(prefix="seqcast-bench-models-"))
    for name in names:
        (models / name).symlink_to(REPO / "models" / name, target_is_directory=True)
    return models


def serve(models: Path, *flags: str) -> tuple[subprocess.Popen, str, str]:
    """Starts `seqcast serve --model-dir models` with `flags` (free ports for gRPC and metrics);
    returns the process, its gRPC address and its start-up lines. The rest of its output is
    drained on a thread, so that the pipe never fills."""
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("seqcast")), "--log-level", "WARNING", "serve", "--model-dir", str(models),
         "--port", "0", "--metrics-port", "0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    startup: list[str] = []
    for line in proc.stdout:
        startup.append(line)
        if line.lstrip().startswith("try:"):  # the last line the server prints when it is up
            text = "".join(startup)
            match = re.search(r"listening on (\S+)", text)
            assert match is not None, text
            stdout = proc.stdout
            threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
            return proc, match.group(1), text
    raise RuntimeError(f"seqcast serve exited with {proc.wait()} before listening:\n{''.join(startup)}")


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
