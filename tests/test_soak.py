"""The soak benchmark's smoke run: 16 mixed clients (streams, unary, forecasts, cancels, deadlines)
for 20 seconds against a real server, with no unexpected outcome."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_a_short_soak_has_no_unexpected_outcome_and_the_server_survives() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--duration", "20", "--warmup", "5", "--clients", "16",
         # RSS still settles in a 20 s run; the 10-minute soak holds the 5% bound (docs/benchmarks.md).
         "--max-rss-growth", "0.25"],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "unexpected outcomes: 0" in out.stdout
    for kind in ("stream", "unary", "forecast", "cancel", "deadline"):
        assert f"| {kind} | " in out.stdout
    assert "| cancel | " in out.stdout and "CANCELLED" in out.stdout
