"""Forecast accuracy metrics and the statsforecast baselines they are compared against.

Metrics take numpy arrays for one series (or, for wQL, any batch shape) and return floats:
`mase`, `smape`, `weighted_quantile_loss`, and `geometric_mean_relative` to report a model
relative to a baseline (DESIGN.md: "each also relative to seasonal naive"). Each docstring
says what a zero denominator gives.

`statsforecast_baselines` fits the statistical baselines (`BASELINES`: statsforecast's
SeasonalNaive, AutoETS, AutoTheta, AutoARIMA and, for seasonal data, MSTL) on a train `SeriesSet`
(see `seqcast.export.forecast.series`) and returns point forecasts and quantiles as arrays.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from seqcast.export.forecast.series import SeriesSet

__all__ = [
    "BASELINES", "Baseline", "baseline_models", "baselines_for", "geometric_mean_relative", "mase", "smape",
    "statsforecast_baselines", "weighted_quantile_loss",
]

log = logging.getLogger(__name__)


def mase(y: np.ndarray, yhat: np.ndarray, insample: np.ndarray, season: int) -> float:
    """Mean absolute scaled error of one series.

        MASE = mean_h |y_h - yhat_h| / mean_{t > m} |x_t - x_{t-m}|

    where x = `insample` (the history the forecast was made from, shape (T,)) and m = `season`;
    the denominator is the in-sample MAE of the seasonal naive forecast (m = 1: naive). 0 is
    perfect, 1 matches in-sample seasonal naive. When the history repeats exactly every m steps
    the denominator is 0: a perfect forecast still scores 0, any error scores inf. Raises if
    T <= m.
    """
    y, yhat, x = (np.asarray(a, np.float64) for a in (y, yhat, insample))
    _check_same_shape(y, yhat)
    if season < 1 or x.ndim != 1 or len(x) <= season:
        raise ValueError(f"need a 1-D insample longer than season={season}, got shape {x.shape}")
    error = np.abs(y - yhat).mean()
    scale = np.abs(x[season:] - x[:-season]).mean()
    if scale == 0:
        # Limit of error / scale as scale -> 0; 0 / 0 is taken as 0 so that a perfect forecast
        # is perfect whatever the history looked like.
        return 0.0 if error == 0 else float("inf")
    return float(error / scale)


def smape(y: np.ndarray, yhat: np.ndarray) -> float:
    """Symmetric mean absolute percentage error, in percent, 0 to 200 (the M4 definition).

        sMAPE = 100 / H * sum_h 2 |y_h - yhat_h| / (|y_h| + |yhat_h|)

    A step where y_h = yhat_h = 0 counts as 0 (a perfect forecast). Symmetric in y and yhat;
    a step forecast with the opposite sign, or 0 against a non-zero value, costs the full 200.
    """
    y, yhat = np.asarray(y, np.float64), np.asarray(yhat, np.float64)
    _check_same_shape(y, yhat)
    denom = np.abs(y) + np.abs(yhat)
    ratio = np.divide(2 * np.abs(y - yhat), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(100 * ratio.mean())


def weighted_quantile_loss(y: np.ndarray, quantile_preds: Mapping[float, np.ndarray] | np.ndarray,
                           levels: Sequence[float] | None = None) -> float:
    """Weighted quantile loss as in GluonTS (`mean_wQuantileLoss`).

        wQL_q = 2 * sum_i pinball_q(y_i, f_i) / sum_i |y_i|,
        pinball_q(y, f) = max(q (y - f), (q - 1) (y - f)),
        wQL = mean over levels q of wQL_q.

    `y` has any shape S (one series (H,), or a batch (N, H): the sums then run over every series
    at once, as GluonTS aggregates a data set). `quantile_preds` is either a dict level -> array of
    shape S (then `levels` defaults to its keys) or an array of shape (Q,) + S with `levels` of
    length Q. For q = 0.5 alone, wQL = sum |y - f| / sum |y| (the normalised deviation, ND).
    NaN when sum |y| = 0.
    """
    y = np.asarray(y, np.float64)
    levels, preds = _quantile_array(quantile_preds, levels)
    if preds.shape != (len(levels),) + y.shape:
        raise ValueError(f"quantile predictions of shape {preds.shape} do not match "
                         f"{len(levels)} levels x y of shape {y.shape}")
    q = np.asarray(levels, np.float64).reshape((-1,) + (1,) * y.ndim)
    diff = y[None] - preds
    pinball = np.maximum(q * diff, (q - 1) * diff)
    denom = np.abs(y).sum()
    if denom == 0:
        return float("nan")
    per_level = 2 * pinball.reshape(len(levels), -1).sum(axis=1) / denom
    return float(per_level.mean())


def geometric_mean_relative(values: Sequence[float] | np.ndarray,
                            baseline: Sequence[float] | np.ndarray) -> float:
    """Geometric mean of values_i / baseline_i, e.g. a model's per-series MASE relative to
    seasonal naive's: below 1 means better than the baseline.

        GM = exp(mean_i log(values_i / baseline_i))

    Pairs where either number is NaN or infinite, or the baseline is 0 (ratio undefined), are
    left out; NaN if none remain. A value of 0 (a perfect series) makes the result 0, as the
    formula says. Negative numbers are refused: errors are non-negative.
    """
    v, b = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    _check_same_shape(v, b)
    keep = np.isfinite(v) & np.isfinite(b) & (b != 0)
    if (v[keep] < 0).any() or (b[keep] < 0).any():
        raise ValueError("geometric_mean_relative needs non-negative errors")
    if not keep.any():
        return float("nan")
    with np.errstate(divide="ignore"):
        return float(np.exp(np.log(v[keep] / b[keep]).mean()))


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")


def _quantile_array(preds: Mapping[float, np.ndarray] | np.ndarray,
                    levels: Sequence[float] | None) -> tuple[list[float], np.ndarray]:
    """Normalise the two accepted forms to (levels, array (Q,) + S)."""
    if isinstance(preds, Mapping):
        levels = list(preds) if levels is None else list(levels)
        return levels, np.stack([np.asarray(preds[q], np.float64) for q in levels])
    if levels is None:
        raise ValueError("levels are required when quantile predictions are an array")
    return list(levels), np.asarray(preds, np.float64)


# --- baselines -----------------------------------------------------------------------------

# Every forecast table's statistical baselines, in its order. MSTL only for seasonal data.
BASELINES = ("SeasonalNaive", "AutoETS", "AutoTheta", "AutoARIMA", "MSTL")


@dataclass(frozen=True, eq=False)
class Baseline:
    """One baseline's forecasts for a set of series, in the order of `keys`.

    point: (N, H) mean forecasts; quantiles: (Q, N, H) at `levels` (ascending); seconds: the
    time it took to fit and forecast every series.
    """

    keys: list[str]
    levels: list[float]
    point: np.ndarray
    quantiles: np.ndarray
    seconds: float = 0.0


def baseline_models(season_length: int) -> list[tuple[object, int | None]]:
    """The statsforecast models of `BASELINES` for season m, each named by its alias, with the
    most values of each history it is fitted on (None: all it is given).

    * AutoETS: statsforecast's ETS fits seasonal models for m <= 24 only; above that it
      fits non-seasonal ones (vic_elec's m = 48).
    * AutoARIMA uses the approximation R's auto.arima uses for long or strongly seasonal
      series (approximate likelihood in the order search) and seasonal orders P, Q <= 1:
      exact search took 18 s per 300-value hourly series on one core, this about 1 s. Its
      state grows with m and its cost faster than the length, so it sees at most the last
      max(10m, 200) values: on vic_elec's 8 weeks (2,688 values, m = 48) it took 100 s per
      window, on the last 10 days about 5 s.
    * MSTL decomposes with STL at season m and forecasts the trend with AutoETS; left out
      when m = 1 (nothing to decompose).
    """
    from statsforecast.models import MSTL, AutoARIMA, AutoETS, AutoTheta, SeasonalNaive

    m = season_length
    models: list[tuple[object, int | None]] = [
        (SeasonalNaive(season_length=m), None),
        (AutoETS(season_length=m), None),
        (AutoTheta(season_length=m), None),
        (AutoARIMA(season_length=m, approximation=True, max_P=1, max_Q=1), max(10 * m, 200)),
    ]
    return models + [(MSTL(season_length=m), None)] if m > 1 else models


def statsforecast_baselines(train: SeriesSet, horizon: int, levels: list[float],
                            n_jobs: int = 1) -> dict[str, Baseline]:
    """Fit every baseline (season = `train.season_length`) on every series and forecast
    `horizon` steps. Returns {"SeasonalNaive": ..., "AutoETS": ..., ...} in `BASELINES` order.

    Quantile level q is read off the model's own prediction interval of coverage |2q - 1|
    (statsforecast's `level=`, Gaussian around the point forecast): the lower bound for
    q < 0.5, the upper for q > 0.5; q = 0.5 is the point forecast, which is the median of those
    symmetric intervals. A model that fails on a series falls back to SeasonalNaive there
    (statsforecast's `fallback_model`).
    """
    return baselines_for([s.values for s in train.series], train.keys(), train.season_length, horizon, levels, n_jobs)


def baselines_for(histories: Sequence[np.ndarray], keys: list[str], season_length: int, horizon: int,
                  levels: list[float], n_jobs: int = 1, progress: bool = False) -> dict[str, Baseline]:
    """`statsforecast_baselines` for plain arrays: forecast `horizon` steps after each history.

    progress: show a progress bar per baseline (on stderr), the series in chunks of a tenth.
    """
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import SeasonalNaive
    from tqdm import tqdm

    levels = sorted(float(q) for q in levels)
    if not all(0 < q < 1 for q in levels):
        raise ValueError(f"quantile levels must lie in (0, 1), got {levels}")
    coverages = sorted({_coverage(q) for q in levels if q != 0.5})

    def frame(longest: int | None) -> pd.DataFrame:
        # Integer ids and time steps: the baselines need only order and season, not calendar
        # dates, and integer ids make the output order independent of how keys sort.
        cut = [h if longest is None else h[-longest:] for h in histories]
        return pd.DataFrame({
            "unique_id": np.concatenate([np.full(len(h), i) for i, h in enumerate(cut)]),
            "ds": np.concatenate([np.arange(len(h)) for h in cut]),
            "y": np.concatenate(cut).astype(np.float64),
        })

    chunk = max(1, -(-len(histories) // 10))
    out = {}
    for model, longest in baseline_models(season_length):
        name = str(model.alias)  # type: ignore[attr-defined]
        data = frame(longest)
        started = time.perf_counter()
        parts = []
        with tqdm(total=len(histories), desc=f"baseline {name}", unit="series", disable=not progress) as bar:
            for first in range(0, len(histories), chunk):
                ids = data["unique_id"].between(first, first + chunk - 1)
                sf = StatsForecast(models=[model], freq=1, n_jobs=n_jobs,
                                   fallback_model=SeasonalNaive(season_length=season_length))
                with warnings.catch_warnings():
                    # AutoARIMA's order search tries models that do not converge and warns for each.
                    warnings.filterwarnings("ignore", "possible convergence problem", UserWarning)
                    forecast = sf.forecast(df=data[ids], h=horizon, level=coverages or None)
                parts.append(forecast.reset_index() if "unique_id" not in forecast.columns else forecast)
                bar.update(min(chunk, len(histories) - first))
        result = pd.concat(parts).sort_values(["unique_id", "ds"])
        out[name] = _baseline_from_frame(result, name, keys, horizon, levels, time.perf_counter() - started)
        log.info("baseline %s: %d series in %.1f s", name, len(histories), out[name].seconds)
    return out


def _coverage(q: float) -> int | float:
    # statsforecast names interval columns after the coverage exactly as passed ("-lo-80" for
    # 80, "-lo-80.0" for 80.0), so pass whole numbers as int; rounding dodges 79.99999.
    coverage = round(abs(2 * q - 1) * 100, 6)
    return int(coverage) if coverage.is_integer() else coverage


def _column(model: str, q: float) -> str:
    if q == 0.5:
        return model
    return f"{model}-{'lo' if q < 0.5 else 'hi'}-{_coverage(q)}"


def _baseline_from_frame(out: object, model: str, keys: list[str], horizon: int,
                         levels: list[float], seconds: float) -> Baseline:
    def grid(column: str) -> np.ndarray:
        return out[column].to_numpy(np.float64).reshape(len(keys), horizon)  # type: ignore[index]

    return Baseline(keys=keys, levels=levels, point=grid(model),
                    quantiles=np.stack([grid(_column(model, q)) for q in levels]), seconds=seconds)
