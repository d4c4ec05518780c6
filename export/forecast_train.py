"""Training a forecaster: random windows, pinball loss, validation by forecasting, checkpoints.

A run lives in one directory: `config.json`, `best.pt` (best validation MASE, measured by
forecasting the validation windows autoregressively through the same decoding loop the server
runs) and `metrics.json`. The AR(p) baseline is fitted by least squares instead of trained.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from seqcast.export.config import ForecastConfig
from seqcast.export.forecast_data import TASKS, ForecastTask, Window, WindowSampler, ar_training_windows, scaled_contexts, training_series, windows
from seqcast.export.forecast_metrics import mase
from seqcast.export.forecasters import ArForecaster, build_forecaster, fit_ar, pinball_loss
from seqcast.export.graphs import TorchRuntime, graphs_for
from seqcast.export.train import seed_everything
from seqcast.server.decoding import forecast_values

log = logging.getLogger(__name__)

def context_length(cfg: ForecastConfig) -> int:
    """Values of history the model sees: the task's, or the AR order, MLP or Theta lookback if longer."""
    theta = cfg.theta_lookbacks if cfg.theta_weight else ()
    return max(TASKS[cfg.data].context_length, cfg.ar_order, *cfg.lookbacks, *theta)


def min_context(cfg: ForecastConfig) -> int:
    """The fewest values a request may send: the task's minimum, and at least the AR order."""
    return max(TASKS[cfg.data].min_context, cfg.ar_order)


def point_column(model: nn.Module) -> int:
    """Index of the point forecast among the decoder output's columns."""
    return 0 if isinstance(model, ArForecaster) else list(model.cfg.quantile_levels).index(0.5)


def forecast_windows(model: nn.Module, cfg: ForecastConfig, items: list[Window], batch_size: int = 256) -> np.ndarray:
    """Forecasts of every window in data units, (N, H, K), from PyTorch through the decoding loop."""
    model.eval()
    runtime = TorchRuntime(graphs_for(model))
    task = TASKS[cfg.data]
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        contexts, scales = scaled_contexts([w.history for w in chunk], context_length(cfg), task.scaler)
        columns = forecast_values(runtime, contexts, task.horizon, point_column(model))
        out.extend(task.scaler.inverse(c.astype(np.float64), s) for c, s in zip(columns, scales))
    return np.stack(out)


def mean_mase(task: ForecastTask, items: list[Window], point: np.ndarray, season: int) -> float:
    history = task.baseline_history
    return float(np.mean([
        mase(w.target, p, w.history if history is None else w.history[-history:], season) for w, p in zip(items, point)
    ]))


def load_forecaster(run_dir: Path, checkpoint: str = "best.pt") -> tuple[nn.Module, ForecastConfig]:
    """The trained (or fitted) forecaster of a run directory, in eval mode, with its config."""
    raw = json.loads((run_dir / "config.json").read_text())
    cfg = ForecastConfig(**{**raw, "quantile_levels": tuple(raw["quantile_levels"])})
    model = build_forecaster(cfg)
    model.load_state_dict(torch.load(run_dir / checkpoint, map_location="cpu", weights_only=True))
    return model.eval(), cfg


def is_forecast_run(run_dir: Path) -> bool:
    config = run_dir / "config.json"
    return config.exists() and "quantile_levels" in json.loads(config.read_text())


def _fit_ar(cfg: ForecastConfig, model: ArForecaster, series: list[np.ndarray]) -> None:
    task = TASKS[cfg.data]
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


def train_forecaster(cfg: ForecastConfig, run_dir: Path) -> dict:
    """Trains (or, for AR, fits) a forecaster; returns the metrics also written to metrics.json."""
    torch.set_num_threads(cfg.threads)
    if cfg.architecture == "ar" and not cfg.ar_order:
        cfg = replace(cfg, ar_order=TASKS[cfg.data].ar_order)
    if cfg.free_running is None:
        cfg = replace(cfg, free_running=TASKS[cfg.data].free_running)
    if (run_dir / "best.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run; choose another directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    seed_everything(cfg.seed)
    task = TASKS[cfg.data]
    data = task.load()
    series = training_series(task, data)
    validation = windows(task, data, "validation")
    model = build_forecaster(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    history: list[dict] = []

    if isinstance(model, ArForecaster):
        _fit_ar(cfg, model, series)
        model.eval()
        best = mean_mase(task, validation, forecast_windows(model, cfg, validation)[..., 0], data.season_length)
        torch.save(model.state_dict(), run_dir / "best.pt")
        steps = 0
    else:
        best, steps = _train_neural(cfg, model, task, series, validation, data.season_length, run_dir, history)

    metrics = {
        "data": cfg.data,
        "architecture": cfg.architecture,
        "parameters": n_params,
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
        "best_validation_mase": round(best, 4),
        "history": history,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s %s: validation MASE %.3f", cfg.data, cfg.architecture, best)
    return metrics


def _train_neural(
    cfg: ForecastConfig,
    model: nn.Module,
    task: ForecastTask,
    series: list[np.ndarray],
    validation: list[Window],
    season: int,
    run_dir: Path,
    history: list[dict],
) -> tuple[float, int]:
    sampler = WindowSampler(series, replace(task, context_length=context_length(cfg)), np.random.default_rng(cfg.seed))
    free = np.random.default_rng(cfg.seed + 1)
    levels = torch.tensor(cfg.quantile_levels, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = math.inf
    column = point_column(model)
    progress = tqdm(total=cfg.steps, desc=f"train {cfg.data} {cfg.architecture}", unit="step")
    for step in range(cfg.steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg)
        batch = sampler.sample(cfg.batch_size)
        quantiles = model(
            torch.from_numpy(batch.context), torch.from_numpy(batch.mask), torch.from_numpy(batch.decoder_inputs),
            free_running=bool(free.random() < cfg.free_running),
        )
        loss = pinball_loss(quantiles, torch.from_numpy(batch.targets), levels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optimizer.step()
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            forecasts = forecast_windows(model, cfg, validation)
            score = mean_mase(task, validation, forecasts[..., column], season)
            history.append({"step": step + 1, "train_loss": round(loss.item(), 5), "validation_mase": round(score, 4)})
            progress.write(f"step {step + 1}: train pinball {loss.item():.4f}, validation MASE {score:.4f}")
            if score < best:
                best = score
                torch.save(model.state_dict(), run_dir / "best.pt")
    progress.close()
    return best, cfg.steps
