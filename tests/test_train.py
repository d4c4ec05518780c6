"""Training through `seqcast train`: seeded runs repeat exactly, runs resume, runs are not overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from seqcast.server.cli import main as seqcast

from conftest import CORPUS

MICRO = ["--vocab-size", "400", "--d-model", "32", "--n-heads", "2", "--layers", "1", "--d-ff", "64",
         "--train-limit", "1500", "--test-limit", "8", "--batch-tokens", "800", "--warmup-steps", "4",
         "--eval-every", "4", "--checkpoint-every", "4", "--threads", "1", "--corpus", str(CORPUS)]


def _train(run_dir: Path, *extra: str) -> int:
    return seqcast(["--log-level", "WARNING", "train", "--run-dir", str(run_dir), *MICRO, *extra])


def _weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / name, map_location="cpu", weights_only=False)["model"]


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not(tmp_path: Path) -> None:
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert _train(tmp_path / name, "--steps", "6", "--seed", seed) == 0
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_run_resumes_from_its_last_checkpoint_and_reports_test_scores(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(run, "--steps", "8") == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 8
    assert _train(run, "--steps", "12", "--resume") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 12
    assert [h["step"] for h in metrics["history"]] == [4, 8, 12]  # history carried over
    assert set(metrics["test"]) == {"chrf", "bleu"}
    assert '"chrf"' in capsys.readouterr().out


def test_an_existing_run_is_never_overwritten_or_resumed_with_other_settings(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(run, "--steps", "4") == 0
    assert _train(run, "--steps", "4") == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert _train(run, "--steps", "8", "--resume", "--lr", "0.1") == 2
    err = capsys.readouterr().err
    assert "--resume with settings that differ from" in err and err.rstrip().endswith(": lr")
