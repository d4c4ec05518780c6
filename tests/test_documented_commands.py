"""Every subcommand README.md and docs/ name runs here through the CLI, on tiny inputs, so a
refactor cannot silently break a documented command (the client's subcommands run against a live
server in test_client_cli.py and test_forecast.py; `serve` as a process in test_server.py)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import polib
import pytest

from seqcast.client.cli import build_parser as build_client_parser
from seqcast.client.cli import main as client_main
from seqcast.export.cli import build_parser
from seqcast.export.cli import main as seqcast
from seqcast.export.forecast.metrics import BASELINES
from seqcast.export.translation.corpus import read_split

from conftest import CORPUS, REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FIXTURE_SOURCES = Path(__file__).parent / "fixtures" / "po" / "sources"
MICRO = ["--vocab-size", "400", "--d-model", "32", "--n-heads", "2", "--layers", "1", "--d-ff", "64",
         "--train-limit", "1500", "--test-limit", "8", "--batch-tokens", "800", "--warmup-steps", "2",
         "--eval-every", "2", "--steps", "2", "--threads", "1", "--corpus", str(CORPUS)]


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices}


def _documented(program: str, subcommands: set[str]) -> set[str]:
    """Subcommands of `program` that code in the docs runs: in fenced blocks, or `inline code`."""
    snippets: list[str] = []
    for doc in DOCS:
        fenced = False
        for line in doc.read_text().splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif fenced:
                snippets.append(line)
            else:
                snippets.extend(re.findall(r"`([^`]+)`", line))
    found = set()
    for snippet in snippets:
        words = snippet.replace("\\", " ").split()
        for i, word in enumerate(words):
            if word.rsplit("/", 1)[-1] == program:
                found.update(next(([w] for w in words[i + 1 :] if w in subcommands), []))
    return found


# Where each documented subcommand runs through the CLI: in this module, or in the named test.
SEQCAST_COMMANDS = {
    "data": "test_data_builds_a_corpus",
    "train": "test_train_and_resume",
    "train-forecast": "test_train_forecast_and_export (--csv: test_forecast_csv.py)",
    "export": "test_train_forecast_and_export",
    "evaluate": "test_evaluate_with_the_baseline",
    "evaluate-forecast": "test_evaluate_forecast (--csv: test_forecast_csv.py)",
    "quantize": "test_precision.py::test_forecast_bundle_quantized_within_one_percent_mase",
    "import-hf": "test_marian_import.py::test_import_writes_a_parity_checked_bundle_the_server_loads",
    "serve": "test_server.py::test_seqcast_serve_starts_answers_and_stops_on_sigterm",
}
CLIENT_COMMANDS = {
    "translate": "test_client_cli.py::test_translate_prints_one_line_per_text",
    "models": "test_client_cli.py (models)",
    "health": "test_client_cli.py::test_target_defaults_to_the_environment",
    "forecast": "test_forecast.py (forecast --csv --plot)",
    "bench": "test_loadgen.py (seqcast-client bench)",
}


def test_every_documented_subcommand_runs_in_a_test() -> None:
    documented = _documented("seqcast", _subcommands(build_parser()))
    assert {"train", "evaluate", "serve"} <= documented, "the docs' commands were not found: the scan is broken"
    assert documented <= set(SEQCAST_COMMANDS), f"documented but run by no test: {documented - set(SEQCAST_COMMANDS)}"
    client = _documented("seqcast-client", _subcommands(build_client_parser()))
    assert {"translate", "forecast"} <= client
    assert client <= set(CLIENT_COMMANDS), f"documented but run by no test: {client - set(CLIENT_COMMANDS)}"
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for where in [*SEQCAST_COMMANDS.values(), *CLIENT_COMMANDS.values()]:
        name = where.split("::")[-1].split(" ")[0]
        assert name.endswith(".py") or f"def {name}(" in tests, f"no test {where}"


def test_data_builds_a_corpus(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    shutil.copytree(FIXTURE_SOURCES, sources)
    po = sources / "debian/gamma/usr/share/locale/de/LC_MESSAGES/gamma.po"
    polib.pofile(str(po)).save_as_mofile(str(po.with_suffix(".mo")))
    po.unlink()
    assert seqcast(["--log-level", "WARNING", "data", "--sources", str(sources), "--out", str(tmp_path / "out")]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["total"] > 0 and (tmp_path / "out" / "train.jsonl.gz").is_file()


def test_train_and_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert seqcast(["--log-level", "WARNING", "train", "--run-dir", str(run), *MICRO]) == 0
    assert seqcast(["--log-level", "WARNING", "train", "--run-dir", str(run), *MICRO[:-8], "--steps", "4",
                    *MICRO[-6:], "--resume"]) == 0
    assert (run / "last.pt").is_file()


def test_train_forecast_and_export(tmp_path: Path) -> None:
    run = tmp_path / "ar"
    assert seqcast(["--log-level", "WARNING", "train-forecast", "--data", "tourism", "--architecture", "ar",
                    "--run-dir", str(run)]) == 0
    assert seqcast(["--log-level", "WARNING", "export", "--run-dir", str(run), "--models-dir", str(tmp_path / "models"),
                    "--name", "tourism-ar", "--version", "1"]) == 0
    assert (tmp_path / "models" / "tourism-ar" / "1" / "manifest.json").is_file()


def test_evaluate_with_the_baseline(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A TSV corpus of 600 pairs: its held-out test split (12 pairs) is scored, and the retrieval
    # baseline indexes its training split (the bundled corpus's 171k pairs take half a minute).
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{p.source}\t{p.target}\n" for p in read_split(CORPUS, "train", 600)), encoding="utf-8")
    out = tmp_path / "scores.json"
    code = seqcast(["--log-level", "WARNING", "evaluate", str(model_dir / "tiny-transformer" / "1"), "--corpus", str(tsv),
                    "--limit", "8", "--baseline", "--json", str(out)])
    assert code == 0
    scores = json.loads(out.read_text())
    assert len(scores) == 2 and all(0 <= s["chrf"] <= 100 for s in scores)
    assert "tiny-transformer" in capsys.readouterr().out


def test_evaluate_forecast(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scores.json"
    code = seqcast(["--log-level", "WARNING", "evaluate-forecast", str(model_dir / "tiny-forecast-ar" / "1"),
                    "--data", "tourism", "--limit", "16", "--json", str(out)])
    assert code == 0
    systems = [s["system"] for s in json.loads(out.read_text())]
    assert systems == [*BASELINES, "tiny-forecast-ar (ar)"]
    assert "tourism: 16 test windows" in capsys.readouterr().out


def test_the_client_translates_with_exact_lengths(server, capsys: pytest.CaptureFixture[str]) -> None:
    assert client_main(["--target", server.target, "translate", "--json", "--min-new-tokens", "6",
                        "--max-new-tokens", "6", "Open file"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["output_tokens"] == 6 and result["finish_reason"] == "length"
