"""The soak benchmark's CI smoke: 30 seconds of 64 mixed clients while versions change, no
unexpected status (the 10-minute run is in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_thirty_seconds_of_mixed_clients_and_reloads_end_with_no_unexpected_status() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--duration", "25", "--warmup", "5", "--reload-every", "6", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["unexpected"] == 0 and report["clients"] == 64
    assert report["reloads"] >= 3
    assert {"en-de/1", "en-de/2", "tourism/1", "tourism/2"} <= set(report["versions_seen"])
    kinds = {key.split()[0] for key in report["calls"]}
    assert kinds == {"unary", "stream", "forecast", "cancel", "deadline"}
    assert report["rss_mib_end"] > 0 and report["unary_p99_s_last_fifth"] is not None
