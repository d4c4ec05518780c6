"""One training loop for every trained model: steps, learning-rate schedule, gradient clipping,
validation, the best and last checkpoints, and resume.

A model's trainer says what differs (the loss of the next batch, the validation score, its
random generators); `fit` does the rest. A run lives in one directory:

* `config.json`: the run's settings, written by `start_run`;
* `last.pt`: written every `checkpoint_every` steps and at the end, for `--resume`;
* `best.pt`: the weights with the lowest validation score;
* `metrics.json`: written by the caller at the end.

Checkpoints hold tensors and plain Python values only, and are read with
`torch.load(..., weights_only=True)`: loading one never unpickles code.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
LAST, BEST, CONFIG = "last.pt", "best.pt", "config.json"


@dataclass
class FitState:
    """Where a run stands: steps taken, the best validation score so far, every evaluation, and
    the seconds spent training (summed over resumed sessions)."""

    step: int = 0
    best: float = math.inf
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


class Trainer(Protocol):
    """What differs between models. `validate` returns named scores; `fit` keeps the weights
    that minimise the one named by `FitSettings.score`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def loss(self) -> torch.Tensor: ...

    def validate(self) -> dict[str, float]: ...

    def rng_state(self) -> dict[str, Any]: ...

    def load_rng_state(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class FitSettings:
    steps: int
    lr: float
    lr_factor: Callable[[int], float]  # of the 0-based step about to be taken
    clip_norm: float
    eval_every: int
    checkpoint_every: int
    score: str  # the validation score to minimise, e.g. "dev_loss"
    description: str  # the progress bar's label


def start_run(run_dir: Path, config: Mapping[str, Any], resume: bool, resumable: frozenset[str]) -> bool:
    """Checks and writes the run's config.json; returns whether the run resumes from last.pt.

    A run directory is never overwritten. On resume only the settings in `resumable` (such as
    the number of steps, to extend a run) may differ from the saved config: anything else would
    mix two experiments in one directory.
    """
    resuming = resume and (run_dir / LAST).exists()
    if resuming:
        saved = json.loads((run_dir / CONFIG).read_text())
        changed = sorted(k for k, v in config.items() if k not in resumable and _jsonable(saved.get(k)) != _jsonable(v))
        if changed:
            raise ValueError(f"--resume with settings that differ from {run_dir / CONFIG}: {', '.join(changed)}")
    elif (run_dir / LAST).exists() or (run_dir / BEST).exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(json.dumps(dict(config), indent=2) + "\n")
    return resuming


def _jsonable(value: Any) -> Any:
    """A value as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def save_checkpoint(path: Path, model: nn.Module, trainer: Trainer | None = None, state: FitState | None = None) -> None:
    """Writes a checkpoint atomically: weights, and for resume the optimizer, progress and RNGs."""
    payload: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "model": model.state_dict()}
    if trainer is not None and state is not None:
        payload |= {
            "optimizer": trainer.optimizer.state_dict(),
            "state": asdict(state),
            "rng": trainer.rng_state(),
            "torch_rng": torch.get_rng_state(),
        }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, read without unpickling (`weights_only=True`)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a seqcast checkpoint of format {CHECKPOINT_FORMAT}")
    return checkpoint


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """`model` with the checkpoint's weights, in eval mode."""
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.eval()


def _resume(run_dir: Path, trainer: Trainer) -> FitState:
    saved = load_checkpoint(run_dir / LAST)
    trainer.model.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.load_rng_state(saved["rng"])
    torch.set_rng_state(saved["torch_rng"])
    state = FitState(**saved["state"])
    log.info("resumed at step %d (best %.4f)", state.step, state.best)
    return state


def fit(trainer: Trainer, settings: FitSettings, run_dir: Path, resume: bool) -> FitState:
    """Trains until `settings.steps`, from the last checkpoint when `resume`; returns the final
    state (best.pt holds the best weights, last.pt the final ones)."""
    state = _resume(run_dir, trainer) if resume else FitState()
    model, optimizer = trainer.model, trainer.optimizer
    progress = tqdm(total=settings.steps, initial=state.step, desc=settings.description, unit="step")
    started, spent = time.perf_counter(), state.seconds
    while state.step < settings.steps:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * settings.lr_factor(state.step)
        loss = trainer.loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
        optimizer.step()
        state.step += 1
        state.seconds = spent + time.perf_counter() - started
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.4f}")
        last_step = state.step == settings.steps
        if state.step % settings.eval_every == 0 or last_step:
            model.eval()
            with torch.no_grad():
                scores = trainer.validate()
            state.history.append({"step": state.step, "train_loss": round(loss.item(), 5),
                                  **{k: round(v, 4) for k, v in scores.items()}})
            shown = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in scores.items())
            progress.write(f"step {state.step}: train loss {loss.item():.4f}, {shown}")
            if scores[settings.score] < state.best:
                state.best = scores[settings.score]
                save_checkpoint(run_dir / BEST, model)
        if state.step % settings.checkpoint_every == 0 or last_step:
            save_checkpoint(run_dir / LAST, model, trainer, state)
    progress.close()
    log.info("%s: %d steps in %.1f s", settings.description, state.step, state.seconds)
    return state
