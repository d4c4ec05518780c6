"""ONNX Runtime's memory arena gives back what a large batch made it grow to, once batches are small again."""

from __future__ import annotations

import json
import subprocess
import sys

from seqcast.bundle.runtime import _ArenaShrinker

from conftest import REPO


def test_a_call_with_a_quarter_of_the_peak_rows_or_fewer_releases_the_arena_once() -> None:
    arena = _ArenaShrinker()
    released = [arena.options(rows) is not None for rows in [1, 256, 200, 65, 64, 64, 1, 16, 2]]
    assert released == [False, False, False, False, True, False, True, False, False]
    # Peaks under 64 rows are never released: small batches come and go at every step.
    arena = _ArenaShrinker()
    assert not any(arena.options(rows) is not None for rows in [63, 1, 48, 2, 60, 1])


# Run in a fresh interpreter: the resident size of the test process depends on what earlier
# tests allocated and freed (glibc keeps freed memory, and moves its mmap threshold, by history).
_LARGE_THEN_SMALL = """
import json, re, sys
from pathlib import Path
import numpy as np
from seqcast.bundle.loading import open_bundle
from seqcast.bundle.runtime import RuntimeOptions

def rss_mib():
    return int(re.search(r"VmRSS:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

model = open_bundle(Path(sys.argv[1]), RuntimeOptions(device="cpu"))
length = 144
small = np.random.default_rng(0).random((1, length), dtype=np.float32)
model.runtime.encode(small, np.ones((1, length), dtype=np.int64))
before = rss_mib()
large = np.random.default_rng(1).random((384, length), dtype=np.float32)
model.runtime.encode(large, np.ones((384, length), dtype=np.int64))
grown = rss_mib()
model.runtime.encode(small, np.ones((1, length), dtype=np.int64))
print(json.dumps([before, grown, rss_mib()]))
"""


def test_memory_a_large_batch_took_is_returned_by_the_next_small_call() -> None:
    run = subprocess.run([sys.executable, "-c", _LARGE_THEN_SMALL, str(REPO / "models" / "vic-elec" / "1")],
                         capture_output=True, text=True, timeout=120, check=True)
    before, grown, after = json.loads(run.stdout.strip().splitlines()[-1])
    assert grown - before > 200, (before, grown)  # the large batch made the arena grow
    assert after - before < 0.2 * (grown - before), (before, grown, after)
