"""Training through `seqcast train` and `seqcast train-forecast` (one training loop): seeded runs repeat
exactly, runs resume (an interrupted one to the same weights), runs are not overwritten, and loading
a checkpoint never unpickles."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from seqcast.export.cli import main as seqcast
from seqcast.export.fit import load_checkpoint
from seqcast.export.forecast.train import ForecastTrainer, load_forecaster

from conftest import CORPUS

MICRO = ["--vocab-size", "400", "--d-model", "32", "--n-heads", "2", "--layers", "1", "--d-ff", "64",
         "--train-limit", "1500", "--test-limit", "8", "--batch-tokens", "800", "--warmup-steps", "4",
         "--eval-every", "4", "--checkpoint-every", "4", "--threads", "1", "--corpus", str(CORPUS)]


def _train(run_dir: Path, *extra: str) -> int:
    return seqcast(["--log-level", "WARNING", "train", "--run-dir", str(run_dir), *MICRO, *extra])


def _weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / name)["model"]


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


FORECAST = ["--data", "tourism", "--architecture", "lstm-dot", "--d-model", "8", "--batch-size", "16",
            "--steps", "12", "--eval-every", "4", "--checkpoint-every", "4", "--threads", "1"]


def _train_forecast(run_dir: Path, *extra: str) -> int:
    return seqcast(["--log-level", "WARNING", "train-forecast", "--run-dir", str(run_dir), *FORECAST, *extra])


def test_an_interrupted_forecaster_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    assert _train_forecast(tmp_path / "straight") == 0
    calls = {"n": 0}
    loss = ForecastTrainer.loss

    def interrupted(self: ForecastTrainer) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 10:  # in step 10: last.pt holds step 8
            raise KeyboardInterrupt
        return loss(self)

    with monkeypatch.context() as patch:
        patch.setattr(ForecastTrainer, "loss", interrupted)
        try:
            _train_forecast(tmp_path / "resumed")
        except KeyboardInterrupt:
            pass
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["state"]["step"] == 8
    assert _train_forecast(tmp_path / "resumed", "--resume") == 0
    straight, resumed = (_weights(tmp_path / name) for name in ("straight", "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    history = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [4, 8, 12]
    assert history == json.loads((tmp_path / "straight" / "metrics.json").read_text())["history"]


class _Payload:
    """An object whose unpickling would run code: a checkpoint must never be loaded that way."""

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(os.environ["SEQCAST_TEST_SENTINEL"]),))


def test_loading_a_checkpoint_never_unpickles(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    assert _train_forecast(run, "--steps", "4") == 0
    sentinel = tmp_path / "unpickled"
    monkeypatch.setenv("SEQCAST_TEST_SENTINEL", str(sentinel))
    checkpoint = load_checkpoint(run / "best.pt")
    torch.save({**checkpoint, "extra": _Payload()}, run / "best.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_forecaster(run)
    assert not sentinel.exists()
    torch.save({"model": checkpoint["model"]}, run / "best.pt")  # not our format
    with pytest.raises(ValueError, match="is not a seqcast checkpoint of format 1"):
        load_forecaster(run)
