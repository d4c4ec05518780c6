"""Forecasting tasks: which data set, horizon, context and held-out windows, and the windows
that training, validation and test draw from them.

A task holds out the end of every series: the last `test_windows` windows of `horizon` steps
are the test set, the `test_windows` windows before them the validation set, and training
windows lie entirely before the validation set. A window's history is everything before it,
so every forecast is made exactly as in production: from the past alone.

Models see the last `context_length` values of the history, scaled per window by the task's
`MeanAbsScaler` fitted on that context.

`forecast_task(cfg)` is the one way from a run's config to its task: a built-in one of `TASKS`,
or `csv_task` for a user's CSV file (read and checked by `csv_source`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from seqcast.bundle.scaling import MeanAbsScaler, Scale
from seqcast.client.series_csv import SeriesCsvError
from seqcast.export.config import CsvSource, ForecastConfig
from seqcast.export.forecast.csv_source import load_csv, resolve
from seqcast.export.forecast.series import SeriesSet, load_tourism, load_vic_elec

@dataclass(frozen=True)
class ForecastTask:
    name: str
    load: Callable[[], SeriesSet]
    horizon: int
    test_windows: int
    # Values of history the neural models see, and the fewest a request may send.
    context_length: int
    min_context: int
    ar_order: int
    season_length: int
    # Share of training batches decoded free-running (see ForecastConfig.free_running).
    free_running: float
    # Per-window scaling, fitted on each context.
    scaler: MeanAbsScaler
    # Values of history given to the statistical baselines and used for MASE's scale
    # (None: all of it). Long half-hourly series are cut to keep AutoETS fast.
    baseline_history: int | None = None

    def recent(self, history: np.ndarray) -> np.ndarray:
        """The part of a window's history the baselines see and MASE is scaled on."""
        return history if self.baseline_history is None else history[-self.baseline_history :]


TASKS: dict[str, ForecastTask] = {
    # 304 quarterly series of 80 values: forecast the last 2 years from up to 8 years.
    "tourism": ForecastTask(
        "tourism", load_tourism, horizon=8, test_windows=1, context_length=32, min_context=8, ar_order=8,
        season_length=4, scaler=MeanAbsScaler(center=False),
        # Two years ahead: teacher forcing alone validated better (MASE 1.05 against 1.12).
        free_running=0.0,
    ),
    # One half-hourly series of 52,608 values: one day ahead from the last three days (AR: the
    # last week), on each of the last 14 days.
    "vic_elec": ForecastTask(
        "vic_elec", load_vic_elec, horizon=48, test_windows=14, context_length=144, min_context=96,
        ar_order=336, season_length=48, baseline_history=8 * 336,
        # 48 steps of smooth data: teacher forcing alone drifts once fed its own forecasts.
        free_running=0.5,
        # Demand swings by a fifth around a level of ~4,500 MWh: centring makes the swings the signal.
        scaler=MeanAbsScaler(center=True),
    ),
}


def forecast_task(cfg: ForecastConfig) -> ForecastTask:
    """The task of a run: a built-in one by name, or the one its CSV source gives (`csv_task`)."""
    if cfg.csv is not None:
        return csv_task(cfg.csv)
    return TASKS[cfg.data]


def csv_task(source: CsvSource) -> ForecastTask:
    """The task of a user's CSV file: one held-out window per series, the rest by one rule.

    From the season m and the horizon h (inferred by `csv_source.resolve` where `source`
    leaves them None):

    * min_context = max(2m, h): two seasons, so the scaler and the transformer's seasonal-naive
      start see the pattern twice, and never less than what is forecast;
    * context_length = max(3m, 4h): tourism's 32 quarters for m = 4, h = 8;
    * ar_order = min_context: AR(p) raises no request's minimum;
    * free_running: half the batches from h = 24 on (vic_elec's fix for long horizons drifting),
      else none (tourism's);
    * baseline_history = max(20m, 1000) values, so long series keep AutoARIMA and MSTL affordable;
    * the scaler is not centred (tourism's; centring suits only series far from zero).

    Every series needs min_context + 3h values: a training window, then validation, then test.
    Loading the series raises `SeriesCsvError` naming any series shorter than that.
    """
    if source.frequency is None or source.season_length is None or source.horizon is None:
        source = resolve(source)
    m, h = source.season_length, source.horizon
    assert m is not None and h is not None
    min_context = max(2 * m, h)
    return ForecastTask(
        name=Path(source.path).stem, load=partial(_load_csv, source, min_context + 3 * h, min_context), horizon=h,
        test_windows=1, context_length=max(3 * m, 4 * h), min_context=min_context, ar_order=min_context,
        season_length=m, free_running=0.5 if h >= 24 else 0.0, scaler=MeanAbsScaler(center=False),
        baseline_history=max(20 * m, 1000),
    )


def _load_csv(source: CsvSource, needed: int, min_context: int) -> SeriesSet:
    data = load_csv(source)
    for s in data.series:
        if len(s) < needed:
            raise SeriesCsvError(
                source.path, f"series {s.key!r} has {len(s)} values; horizon {source.horizon} needs at least {needed} "
                f"(a context of {min_context}, then a training, a validation and a test window of {source.horizon}): "
                "give a shorter --horizon or leave the series out",
            )
    return data


@dataclass(frozen=True)
class Window:
    """One forecast to make: the history before it and the values that followed."""

    key: str
    history: np.ndarray
    target: np.ndarray


def training_series(task: ForecastTask, data: SeriesSet) -> list[np.ndarray]:
    """Every series up to the validation windows (float32)."""
    held_out = 2 * task.test_windows * task.horizon
    return [s.values[: len(s) - held_out] for s in data.series]


def windows(task: ForecastTask, data: SeriesSet, part: Literal["validation", "test"]) -> list[Window]:
    """The held-out windows of every series, by series then time."""
    h, w = task.horizon, task.test_windows
    first = 2 * w if part == "validation" else w  # windows back from the end
    out = []
    for s in data.series:
        for i in range(w):
            start = len(s) - (first - i) * h
            key = s.key if w == 1 else f"{s.key}#w{i}"
            out.append(Window(key, s.values[:start], s.values[start : start + h]))
    return out


def scaled_contexts(
    histories: list[np.ndarray], context_length: int, scaler: MeanAbsScaler
) -> tuple[list[np.ndarray], list[Scale]]:
    """The last `context_length` values of each history, scaled, and each one's scale."""
    contexts, scales = [], []
    for history in histories:
        context = np.asarray(history[-context_length:], dtype=np.float32)
        scale = scaler.fit(context)
        contexts.append(scaler.transform(context, scale))
        scales.append(scale)
    return contexts, scales


@dataclass(frozen=True)
class Batch:
    """Training windows, scaled: contexts right-padded with `mask`; `decoder_inputs` are the last
    context value then the true values before each step; `targets` the true values."""

    context: np.ndarray  # (B, S) float32
    mask: np.ndarray  # (B, S) int64
    decoder_inputs: np.ndarray  # (B, H) float32
    targets: np.ndarray  # (B, H) float32


class WindowSampler:
    """Random training windows: a series in proportion to its windows, a forecast origin, and
    a context of `context_length` values (shorter near a series' start, and one time in ten
    cut to a random length down to `min_context`, so short requests are served well)."""

    def __init__(self, series: list[np.ndarray], task: ForecastTask, rng: np.random.Generator) -> None:
        self.task, self.rng = task, rng
        self.series = [s for s in series if len(s) >= task.min_context + task.horizon]
        counts = np.array([len(s) - task.min_context - task.horizon + 1 for s in self.series], dtype=np.float64)
        if not len(self.series):
            raise ValueError(f"no series of {task.name} is long enough for a training window")
        self.weights = counts / counts.sum()

    def sample(self, batch_size: int) -> Batch:
        t, rng = self.task, self.rng
        contexts, targets = [], []
        for i in rng.choice(len(self.series), size=batch_size, p=self.weights):
            values = self.series[i]
            origin = int(rng.integers(t.min_context, len(values) - t.horizon + 1))
            length = min(t.context_length, origin)
            if rng.random() < 0.1:
                length = int(rng.integers(t.min_context, length + 1))
            context = values[origin - length : origin]
            scale = t.scaler.fit(context)
            contexts.append(t.scaler.transform(context, scale))
            targets.append(t.scaler.transform(values[origin : origin + t.horizon], scale))
        longest = max(len(c) for c in contexts)
        context = np.zeros((batch_size, longest), dtype=np.float32)
        mask = np.zeros((batch_size, longest), dtype=np.int64)
        for row, c in enumerate(contexts):
            context[row, : len(c)], mask[row, : len(c)] = c, 1
        target = np.stack(targets).astype(np.float32)
        last = np.array([c[-1] for c in contexts], dtype=np.float32)[:, None]
        return Batch(context, mask, np.concatenate([last, target[:, :-1]], axis=1), target)


def ar_training_windows(series: list[np.ndarray], task: ForecastTask, order: int) -> list[np.ndarray]:
    """Scaled windows for fitting AR(p): context plus the horizon after it, every `horizon` steps,
    each scaled by its context as at inference."""
    length = max(task.context_length, order)
    out = []
    for values in series:
        for origin in range(length, len(values) - task.horizon + 1, task.horizon):
            context = values[origin - length : origin]
            scale = task.scaler.fit(context)
            out.append(task.scaler.transform(values[origin - length : origin + task.horizon], scale))
    return out
