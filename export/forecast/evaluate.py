"""Forecast accuracy of bundles (or training runs) on a task's held-out test windows, next to
statistical baselines. One path for every task: built-in (tourism, vic_elec) or a user's CSV.

Bundles are run the way the server runs them: ONNX Runtime sessions from the bundle, the
bundle's own scaler on the last `context_length` values, the shared decoding loop, unscaled
outputs; a training run's best checkpoint goes through the same loop in PyTorch.
The baselines of `metrics.BASELINES` (statsforecast's SeasonalNaive, AutoETS,
AutoTheta, AutoARIMA and, for seasonal data, MSTL) forecast the same windows from the same
histories (cut to the task's `baseline_history` for long series). Scores:

* MASE: mean over windows, the scale from each window's history (seasonal differences);
* sMAPE: mean over windows, in percent;
* wQL: weighted quantile loss over levels 0.1 to 0.9, over all windows at once (GluonTS);
  point-only models have none;
* relative MASE: the geometric mean over windows of MASE / SeasonalNaive's MASE (below 1 beats
  seasonal naive).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from seqcast.bundle.decoding import forecast_values
from seqcast.bundle.loading import Bundle, open_bundle
from seqcast.bundle.runtime import RuntimeOptions
from seqcast.bundle.scaling import scaled_context
from seqcast.export.config import QUANTILE_LEVELS
from seqcast.export.forecast.data import ForecastTask, Window, windows
from seqcast.export.forecast.metrics import baselines_for, geometric_mean_relative, mase, smape, weighted_quantile_loss


@dataclass(frozen=True)
class Forecasts:
    """One system's forecasts of every window: point (N, H) and quantiles (Q, N, H) or None."""

    system: str
    point: np.ndarray
    quantiles: np.ndarray | None
    seconds: float


@dataclass(frozen=True)
class Score:
    system: str
    mase: float
    smape: float
    wql: float | None
    relative_mase: float
    seconds: float

    def row(self) -> str:
        wql = "—" if self.wql is None else f"{self.wql:.4f}"
        return f"| {self.system} | {self.mase:.3f} | {self.smape:.2f} | {wql} | {self.relative_mase:.3f} | {self.seconds:.1f} |"


def bundle_forecasts(model: Bundle, items: list[Window], horizon: int, batch_rows: int = 256) -> Forecasts:
    """Forecasts of every window by a loaded forecast bundle, in data units."""
    spec, scaler = model.manifest.forecast, model.scaler
    assert spec is not None and scaler is not None, f"{model.name} is not a forecast model"
    point = spec.columns.index(spec.point)
    started = time.perf_counter()
    out = []
    for start in range(0, len(items), batch_rows):
        fitted = [scaled_context(w.history, spec, scaler) for w in items[start : start + batch_rows]]
        columns = forecast_values(model.runtime, [c for c, _ in fitted], horizon, point)
        out.extend(scaler.inverse(c.astype(np.float64), s) for c, (_, s) in zip(columns, fitted))
    stacked = np.stack(out)  # (N, H, K)
    quantiles = None if spec.point == "mean" else np.moveaxis(stacked, -1, 0)
    return Forecasts(f"{model.name} ({model.manifest.architecture})", stacked[..., point], quantiles, time.perf_counter() - started)


def run_forecasts(run_dir: Path, items: list[Window]) -> Forecasts:
    """Forecasts of every window by a training run's best checkpoint (PyTorch), in data units."""
    from seqcast.export.forecast.train import forecast_windows, load_forecaster, point_column

    model, cfg = load_forecaster(run_dir)
    started = time.perf_counter()
    stacked = forecast_windows(model, cfg, items)  # (N, H, K)
    quantiles = None if cfg.architecture == "ar" else np.moveaxis(stacked, -1, 0)
    return Forecasts(f"{run_dir.name} ({cfg.architecture})", stacked[..., point_column(model)], quantiles,
                     time.perf_counter() - started)


def baseline_forecasts(task: ForecastTask, items: list[Window], season: int) -> list[Forecasts]:
    """Every baseline's forecasts of the windows, each timed on its own, with a progress bar."""
    histories = [task.recent(w.history) for w in items]
    fitted = baselines_for(histories, [w.key for w in items], season, task.horizon, list(QUANTILE_LEVELS), progress=True)
    return [Forecasts(name, b.point, b.quantiles, b.seconds) for name, b in fitted.items()]


def window_mase(task: ForecastTask, items: list[Window], season: int, point: np.ndarray) -> np.ndarray:
    """MASE of each window's point forecast (N, H), scaled on the history the baselines see."""
    return np.array([mase(w.target, p, task.recent(w.history), season) for w, p in zip(items, point)])


def score(task: ForecastTask, items: list[Window], season: int, forecasts: list[Forecasts]) -> list[Score]:
    """Scores every system; relative MASE is against the system named SeasonalNaive."""
    per_window = {f.system: window_mase(task, items, season, f.point) for f in forecasts}
    naive = per_window["SeasonalNaive"]
    targets = np.stack([w.target for w in items])
    return [
        Score(
            system=f.system,
            mase=float(per_window[f.system].mean()),
            smape=float(np.mean([smape(w.target, p) for w, p in zip(items, f.point)])),
            wql=None if f.quantiles is None else weighted_quantile_loss(targets, f.quantiles, list(QUANTILE_LEVELS)),
            relative_mase=geometric_mean_relative(per_window[f.system], naive),
            seconds=f.seconds,
        )
        for f in forecasts
    ]


def evaluate_forecasts(task: ForecastTask, bundles: Sequence[Path] = (), runs: Sequence[Path] = (),
                       limit: int | None = None) -> tuple[int, list[Score]]:
    """The number of test windows of `task` (the first `limit`, if given), and the scores of the
    baselines, then each bundle, then each training run, on them."""
    series = task.load()
    items = windows(task, series, "test")[:limit]
    forecasts = baseline_forecasts(task, items, series.season_length)
    for path in bundles:
        model = open_bundle(path, RuntimeOptions(device="cpu"))
        spec = model.manifest.forecast
        if spec is None or spec.max_horizon < task.horizon or spec.frequency != series.frequency:
            raise ValueError(f"{path} is not a forecast bundle for {task.name} (horizon {task.horizon}, frequency {series.frequency})")
        forecasts.append(bundle_forecasts(model, items, task.horizon))
    forecasts.extend(run_forecasts(run_dir, items) for run_dir in runs)
    return len(items), score(task, items, series.season_length, forecasts)


def score_table(scores: list[Score]) -> str:
    """The scores as a Markdown table, one row per system."""
    header = "| system | MASE | sMAPE % | wQL | MASE / seasonal naive (geo. mean) | seconds |\n|---|---|---|---|---|---|"
    return "\n".join([header, *(s.row() for s in scores)])


def as_json(scores: list[Score]) -> list[dict]:
    """The scores as JSON-ready dicts (`Score`'s fields)."""
    return [asdict(s) for s in scores]
