"""Every benchmark script that README.md and docs/ name runs here on tiny inputs, so a refactor
cannot silently break a documented benchmark. Speed is not judged (benchmarks measure it, tests do
not): each command must run to the end, exit 0 and print its result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BENCH = REPO / "bench"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EN_DE = "models/en-de/1"

# Per script, the runs (arguments; "{tmp}" is the test's temporary directory), tiny but covering
# every mode the docs show.
RUNS: dict[str, list[list[str]]] = {
    "step_time.py": [
        ["--repeats", "2"],
        ["--compare", f"fp32={EN_DE}", "--batch", "1", "--rounds", "1", "--repeats", "2"],
        ["--paired", f"a={EN_DE}", f"b={EN_DE}", "--batch", "1", "2", "--pairs", "5"],
        ["--profile", f"fp32={EN_DE}", "--batch", "1", "--repeats", "3"],
        ["--split", f"fp32={EN_DE}", "--batch", "1", "--repeats", "1"],
    ],
    "fusions.py": [["--rows", "2", "--bundles", EN_DE, "--batch", "1", "--calls", "3"]],
    "cache_in_place.py": [["--batch", "1", "--past", "3", "--calls", "5"]],
    "loop_overhead.py": [["--batch", "1", "--rounds", "1", "--seconds", "0.5"]],
    "alignment_cost.py": [["--rounds", "1", "--batch", "1"]],
    "decode_speed.py": [["--repeats", "1", "--batch", "1"]],
    "forecast_speed.py": [["--models-dir", "models", "--repeats", "1"]],
    "large_requests.py": [["--series", "2", "--big-series", "2", "--big-values", "2000", "--settle", "0"]],
    "unary_load.py": [["--concurrency", "2", "--duration", "1", "--rounds", "1"]],
    "serving.py": [["--duration", "1", "--warmup", "0", "--rounds", "1", "--concurrency", "1"]],
    "frontends.py": [["--duration", "1", "--rounds", "1", "--concurrency", "1"]],
    "soak.py": [["--duration", "6", "--warmup", "1", "--clients", "4", "--reload-every", "3"]],
    "training_time.py": [["--rounds", "1", "--only", "tourism-lstm-dot"]],
    "int8_qdq.py": [[EN_DE, "{tmp}/decoder-qdq.onnx", "--sentences", "2"]],
    # Its peers (CTranslate2, Optimum) are benchmark-only extras: without them it cannot run.
    "marian_race.py": [["--small", "--rounds", "1", "--batch", "1", "--repeats", "1", "--work", "{tmp}/race"],
                       ["--small", "--paired", "seqcast-int8", "ctranslate2-int8", "--rounds", "1", "--batch", "1", "--repeats", "2",
                        "--work", "{tmp}/race"]],
}
NEEDS = {"marian_race.py": "ctranslate2"}


def test_every_documented_benchmark_has_a_run_here() -> None:
    named = {m for doc in DOCS for m in re.findall(r"python bench/(\w+\.py)", doc.read_text())}
    assert {"serving.py", "step_time.py"} <= named, "the docs' benchmark commands were not found: the scan is broken"
    assert named <= set(RUNS), f"documented but run by no test: {named - set(RUNS)}"
    assert all((BENCH / script).is_file() for script in RUNS)


@pytest.mark.parametrize(("script", "args"), [(s, a) for s, runs in RUNS.items() for a in runs],
                         ids=[f"{s}:{' '.join(a)[:40]}" for s, runs in RUNS.items() for a in runs])
def test_a_documented_benchmark_runs_on_tiny_inputs(script: str, args: list[str], tmp_path: Path) -> None:
    if script in NEEDS:
        pytest.importorskip(NEEDS[script], reason=f"{script} races {NEEDS[script]}, a benchmark-only extra")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run([sys.executable, str(BENCH / script), *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script} {' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"{script} printed nothing"
