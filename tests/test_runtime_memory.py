"""ONNX Runtime's memory arena gives back what a large batch made it grow to, once batches are small again."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from seqcast.bundle.loading import open_bundle
from seqcast.bundle.runtime import RuntimeOptions, _ArenaShrinker

from conftest import REPO


def rss_mib() -> float:
    match = re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())
    assert match is not None
    return int(match.group(1)) / 1024


def test_a_call_with_a_quarter_of_the_peak_rows_or_fewer_releases_the_arena_once() -> None:
    arena = _ArenaShrinker()
    released = [arena.options(rows) is not None for rows in [1, 256, 200, 65, 64, 64, 1, 16, 2]]
    assert released == [False, False, False, False, True, False, True, False, False]
    # Peaks under 64 rows are never released: small batches come and go at every step.
    arena = _ArenaShrinker()
    assert not any(arena.options(rows) is not None for rows in [63, 1, 48, 2, 60, 1])


def test_memory_a_large_batch_took_is_returned_by_the_next_small_call() -> None:
    model = open_bundle(REPO / "models" / "vic-elec" / "1", RuntimeOptions(device="cpu"))
    length = 144
    small = np.random.default_rng(0).random((1, length), dtype=np.float32)
    model.runtime.encode(small, np.ones((1, length), dtype=np.int64))
    before = rss_mib()
    large = np.random.default_rng(1).random((384, length), dtype=np.float32)
    model.runtime.encode(large, np.ones((384, length), dtype=np.int64))
    grown = rss_mib()
    model.runtime.encode(small, np.ones((1, length), dtype=np.int64))
    after = rss_mib()
    assert grown - before > 200, (before, grown)  # the large batch made the arena grow
    assert after - before < 0.2 * (grown - before), (before, grown, after)
