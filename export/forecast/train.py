"""Training a forecaster: random windows and pinball loss through the shared training loop
(`seqcast.export.fit`), validated by forecasting.

A run lives in one directory: `config.json`, `last.pt` (for `--resume`), `best.pt` (best
validation MASE, measured by forecasting the validation windows autoregressively through the same
decoding loop the server runs) and `metrics.json`. The AR(p) baseline is fitted by least squares
instead of trained; resuming it fits it again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seqcast.bundle.decoding import forecast_values
from seqcast.export.config import ForecastConfig, from_json
from seqcast.export.fit import BEST, CONFIG, FitSettings, fit, load_weights, save_checkpoint, start_run
from seqcast.export.forecast.data import ForecastTask, Window, WindowSampler, ar_training_windows, forecast_task, scaled_contexts, training_series, windows
from seqcast.export.forecast.evaluate import window_mase
from seqcast.export.forecast.forecasters import ArForecaster, build_forecaster, fit_ar, pinball_loss
from seqcast.export.graphs import TorchRuntime, graphs_for
from seqcast.export.translation.train import seed_everything

log = logging.getLogger(__name__)

# Settings a resumed run may change.
_RESUMABLE = frozenset({"steps", "eval_every", "checkpoint_every", "threads"})


def context_length(cfg: ForecastConfig) -> int:
    """Values of history the model sees: the task's, or the AR order, MLP or Theta lookback if longer."""
    theta = cfg.theta_lookbacks if cfg.theta_weight else ()
    return max(forecast_task(cfg).context_length, cfg.ar_order, *cfg.lookbacks, *theta)


def min_context(cfg: ForecastConfig) -> int:
    """The fewest values a request may send: the task's minimum, and at least the AR order."""
    return max(forecast_task(cfg).min_context, cfg.ar_order)


def point_column(model: nn.Module) -> int:
    """Index of the point forecast among the decoder output's columns."""
    return 0 if isinstance(model, ArForecaster) else list(model.cfg.quantile_levels).index(0.5)


def forecast_windows(model: nn.Module, cfg: ForecastConfig, items: list[Window], batch_size: int = 256) -> np.ndarray:
    """Forecasts of every window in data units, (N, H, K), from PyTorch through the decoding loop."""
    model.eval()
    runtime = TorchRuntime(graphs_for(model))
    task = forecast_task(cfg)
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        contexts, scales = scaled_contexts([w.history for w in chunk], context_length(cfg), task.scaler)
        columns = forecast_values(runtime, contexts, task.horizon, point_column(model))
        out.extend(task.scaler.inverse(c.astype(np.float64), s) for c, s in zip(columns, scales))
    return np.stack(out)


def mean_mase(task: ForecastTask, items: list[Window], point: np.ndarray, season: int) -> float:
    """Mean MASE over windows, as `evaluate-forecast` scores it (`window_mase`)."""
    return float(window_mase(task, items, season, point).mean())


def load_forecaster(run_dir: Path, checkpoint: str = BEST) -> tuple[nn.Module, ForecastConfig]:
    """The trained (or fitted) forecaster of a run directory, in eval mode, with its config."""
    cfg = from_json(ForecastConfig, json.loads((run_dir / CONFIG).read_text()))
    return load_weights(build_forecaster(cfg), run_dir / checkpoint), cfg


def is_forecast_run(run_dir: Path) -> bool:
    config = run_dir / CONFIG
    return config.exists() and "quantile_levels" in json.loads(config.read_text())


def _fit_ar(cfg: ForecastConfig, model: ArForecaster, series: list[np.ndarray]) -> None:
    task = forecast_task(cfg)
    coefficients, intercept = fit_ar(ar_training_windows(series, task, model.order), model.order)
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor(coefficients, dtype=torch.float32)[None, :])
        model.linear.bias.fill_(intercept)


def _lr_factor(step: int, cfg: ForecastConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class ForecastTrainer:
    """The forecaster's part of the training loop: pinball loss on random windows (a share of
    batches decoded free-running), scored by validation MASE."""

    def __init__(self, cfg: ForecastConfig, model: nn.Module, task: ForecastTask, series: list[np.ndarray],
                 validation: list[Window], season: int) -> None:
        self.cfg, self.model, self.task, self.validation, self.season = cfg, model, task, validation, season
        self.sampler = WindowSampler(series, replace(task, context_length=context_length(cfg)), np.random.default_rng(cfg.seed))
        self.free = np.random.default_rng(cfg.seed + 1)
        self.levels = torch.tensor(cfg.quantile_levels, dtype=torch.float32)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss(self) -> torch.Tensor:
        batch = self.sampler.sample(self.cfg.batch_size)
        quantiles = self.model(
            torch.from_numpy(batch.context), torch.from_numpy(batch.mask), torch.from_numpy(batch.decoder_inputs),
            free_running=bool(self.free.random() < self.cfg.free_running),
        )
        return pinball_loss(quantiles, torch.from_numpy(batch.targets), self.levels)

    def validate(self) -> dict[str, float]:
        forecasts = forecast_windows(self.model, self.cfg, self.validation)
        return {"validation_mase": mean_mase(self.task, self.validation, forecasts[..., point_column(self.model)], self.season)}

    def rng_state(self) -> dict[str, Any]:
        return {"windows": self.sampler.rng.bit_generator.state, "free_running": self.free.bit_generator.state}

    def load_rng_state(self, state: Mapping[str, Any]) -> None:
        self.sampler.rng.bit_generator.state = state["windows"]
        self.free.bit_generator.state = state["free_running"]


def train_forecaster(cfg: ForecastConfig, run_dir: Path, resume: bool = False) -> dict:
    """Trains (or resumes; for AR, fits) a forecaster; returns the metrics also written to metrics.json."""
    torch.set_num_threads(cfg.threads)
    task = forecast_task(cfg)
    if cfg.architecture == "ar" and not cfg.ar_order:
        cfg = replace(cfg, ar_order=task.ar_order)
    if cfg.free_running is None:
        cfg = replace(cfg, free_running=task.free_running)
    # The data first: a file that can't be trained on is refused before a run directory is made.
    data = task.load()
    resuming = start_run(run_dir, asdict(cfg), resume, _RESUMABLE)
    seed_everything(cfg.seed)
    series = training_series(task, data)
    validation = windows(task, data, "validation")
    model = build_forecaster(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()

    if isinstance(model, ArForecaster):
        _fit_ar(cfg, model, series)
        model.eval()
        best = mean_mase(task, validation, forecast_windows(model, cfg, validation)[..., 0], data.season_length)
        save_checkpoint(run_dir / BEST, model)
        steps, history, seconds = 0, [], time.perf_counter() - started
    else:
        trainer = ForecastTrainer(cfg, model, task, series, validation, data.season_length)
        settings = FitSettings(
            steps=cfg.steps, lr=cfg.lr, lr_factor=lambda step: _lr_factor(step, cfg), clip_norm=cfg.clip_norm,
            eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every, score="validation_mase",
            description=f"train {cfg.data} {cfg.architecture}",
        )
        state = fit(trainer, settings, run_dir, resuming)
        best, steps, history, seconds = state.best, state.step, state.history, state.seconds

    metrics = {
        "data": cfg.data,
        "architecture": cfg.architecture,
        "parameters": n_params,
        "steps": steps,
        "seconds": round(seconds, 1),
        "best_validation_mase": round(best, 4),
        "history": history,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s %s: validation MASE %.3f", cfg.data, cfg.architecture, best)
    return metrics
