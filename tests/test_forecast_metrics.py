"""Forecast metrics against hand-computed examples, and the statsforecast baselines on real
tourism series."""

from __future__ import annotations

import numpy as np
import pytest

from seqcast.export.forecast.metrics import (BASELINES, geometric_mean_relative, mase, smape,
                                             statsforecast_baselines, weighted_quantile_loss)
from seqcast.export.forecast.series import load_tourism, split_by_time

# --- MASE ----------------------------------------------------------------------------------

def test_mase_hand_computed() -> None:
    history = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # naive in-sample MAE = 1
    assert mase([7.0, 8.0], [8.0, 10.0], history, season=1) == pytest.approx(1.5)
    seasonal = np.array([1.0, 3.0, 2.0, 4.0, 3.0, 5.0])  # lag-2 differences all 1, lag-1 mean 1.6
    assert mase([4.0, 6.0], [4.5, 5.5], seasonal, season=2) == pytest.approx(0.5)
    assert mase([4.0, 6.0], [4.5, 5.5], seasonal, season=1) == pytest.approx(0.5 / 1.6)


def test_mase_perfect_forecast_is_zero() -> None:
    y = np.array([3.0, 1.0, 4.0])
    assert mase(y, y, np.array([1.0, 5.0, 9.0, 2.0, 6.0]), season=2) == 0.0


def test_mase_of_seasonal_naive_on_a_pure_seasonal_series_is_zero() -> None:
    pattern = np.array([10.0, 30.0, 20.0, 40.0])
    history, future = np.tile(pattern, 5), pattern[:3]
    seasonal_naive = history[-4:][:3]
    # The in-sample scale is 0 here too; 0 / 0 counts as a perfect 0, an error as inf.
    assert mase(future, seasonal_naive, history, season=4) == 0.0
    assert mase(future, seasonal_naive + 1, history, season=4) == np.inf


def test_mase_refuses_history_shorter_than_a_season() -> None:
    with pytest.raises(ValueError):
        mase([1.0], [1.0], [1.0, 2.0], season=4)
    with pytest.raises(ValueError):
        mase([1.0, 2.0], [1.0], [1.0, 2.0, 3.0], season=1)


# --- sMAPE ---------------------------------------------------------------------------------

def test_smape_hand_computed_and_perfect() -> None:
    assert smape([100.0], [110.0]) == pytest.approx(200 * 10 / 210)
    assert smape([100.0, 50.0], [110.0, 50.0]) == pytest.approx(100 * 10 / 210)
    assert smape([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
    assert smape([0.0, 0.0], [0.0, 0.0]) == 0.0


def test_smape_is_symmetric_and_bounded() -> None:
    rng = np.random.default_rng(0)
    y, yhat = rng.normal(size=50), rng.normal(size=50)
    assert smape(y, yhat) == pytest.approx(smape(yhat, y))
    assert 0 <= smape(y, yhat) <= 200
    assert smape([5.0], [-5.0]) == pytest.approx(200.0)  # wrong sign: the maximum
    assert smape([5.0], [0.0]) == pytest.approx(200.0)
    # Symmetric also in over- versus under-forecast by the same ratio.
    assert smape([100.0], [200.0]) == pytest.approx(smape([200.0], [100.0]))


# --- weighted quantile loss ----------------------------------------------------------------

def test_wql_hand_computed() -> None:
    y = np.array([10.0, 20.0])
    preds = {0.1: np.array([8.0, 25.0]), 0.9: np.array([12.0, 18.0])}
    # pinball_0.1 = 0.1*2 + 0.9*5 = 4.7; pinball_0.9 = 0.1*2 + 0.9*2 = 2.0; sum |y| = 30.
    expected = (2 * 4.7 / 30 + 2 * 2.0 / 30) / 2
    assert weighted_quantile_loss(y, preds) == pytest.approx(expected)
    as_array = np.stack([preds[0.1], preds[0.9]])
    assert weighted_quantile_loss(y, as_array, [0.1, 0.9]) == pytest.approx(expected)


def test_wql_of_the_median_is_the_normalised_absolute_error() -> None:
    rng = np.random.default_rng(1)
    y, median = rng.uniform(1, 10, size=(4, 6)), rng.uniform(1, 10, size=(4, 6))
    expected = np.abs(y - median).sum() / np.abs(y).sum()
    assert weighted_quantile_loss(y, {0.5: median}) == pytest.approx(expected)
    assert weighted_quantile_loss(y, median[None], [0.5]) == pytest.approx(expected)


def test_wql_perfect_forecast_is_zero_and_shapes_are_checked() -> None:
    y = np.array([1.0, 2.0, 3.0])
    assert weighted_quantile_loss(y, np.stack([y, y, y]), [0.1, 0.5, 0.9]) == 0.0
    assert np.isnan(weighted_quantile_loss(np.zeros(3), {0.5: np.ones(3)}))
    with pytest.raises(ValueError):
        weighted_quantile_loss(y, np.stack([y, y]), [0.1, 0.5, 0.9])
    with pytest.raises(ValueError):
        weighted_quantile_loss(y, np.stack([y]))


# --- relative scores -----------------------------------------------------------------------

def test_geometric_mean_relative() -> None:
    assert geometric_mean_relative([1.0, 4.0], [1.0, 1.0]) == pytest.approx(2.0)
    assert geometric_mean_relative([2.0, 2.0], [4.0, 1.0]) == pytest.approx(1.0)
    assert geometric_mean_relative([3.0, 5.0], [3.0, 5.0]) == pytest.approx(1.0)
    # Undefined pairs (NaN, inf, zero baseline) are left out.
    assert geometric_mean_relative([1.0, np.nan, np.inf, 7.0], [2.0, 1.0, 1.0, 0.0]) == pytest.approx(0.5)
    assert np.isnan(geometric_mean_relative([np.nan], [1.0]))
    with pytest.raises(ValueError):
        geometric_mean_relative([-1.0], [1.0])


# --- statsforecast baselines ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tourism_split():
    tourism = load_tourism()
    few = type(tourism)(tourism.name, tourism.frequency, tourism.season_length, tourism.series[::50])
    return split_by_time(few, horizon=8)


def test_baselines_give_finite_forecasts_with_ordered_quantiles(tourism_split) -> None:
    train, _, test = tourism_split
    levels = [0.9, 0.1, 0.5, 0.25, 0.75]
    result = statsforecast_baselines(train, horizon=8, levels=levels)
    assert list(result) == list(BASELINES)
    for name, forecast in result.items():
        assert forecast.keys == train.keys() and len(train) == 7
        assert forecast.levels == sorted(levels)
        assert forecast.point.shape == (7, 8) and forecast.quantiles.shape == (5, 7, 8)
        assert np.isfinite(forecast.point).all() and np.isfinite(forecast.quantiles).all()
        assert (np.diff(forecast.quantiles, axis=0) >= 0).all(), name
        np.testing.assert_allclose(forecast.quantiles[2], forecast.point)  # median = point
        y = np.stack([s.values for s in test.series])
        assert np.isfinite(weighted_quantile_loss(y, forecast.quantiles, forecast.levels))


def test_seasonal_naive_repeats_the_last_season_of_each_series(tourism_split) -> None:
    train, _, _ = tourism_split
    point = statsforecast_baselines(train, horizon=8, levels=[0.5])["SeasonalNaive"].point
    for row, s in zip(point, train.series):
        np.testing.assert_allclose(row, np.tile(s.values[-4:], 2), rtol=1e-6)
