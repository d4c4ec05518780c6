"""Forecasting data: the shipped data sets load with the documented shapes, splits hold out
exactly the last horizon, gaps are refused, and the scaler round-trips through its manifest."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seqcast.export.forecast import series as series_module
from seqcast.export.forecast.series import (MeanAbsScaler, Scale, SeriesSet, load_aus_retail, load_epf_fr_be,
                                   load_tourism, load_vic_elec, split_by_time)


@pytest.fixture(scope="module")
def tourism() -> SeriesSet:
    return load_tourism()


def _index(s: SeriesSet, i: int) -> pd.DatetimeIndex:
    x = s.series[i]
    return pd.date_range(x.start, periods=len(x), freq=s.frequency)


# --- loaders -------------------------------------------------------------------------------

def test_tourism_is_304_quarterly_series_of_80(tourism: SeriesSet) -> None:
    assert (tourism.name, tourism.frequency, tourism.season_length) == ("tourism", "QS", 4)
    assert len(tourism) == 304
    assert {len(s) for s in tourism.series} == {80}
    # Ordered by the key columns (Region, State, Purpose), not by the joined string.
    assert tourism.keys() == sorted(tourism.keys(), key=lambda k: k.split("/"))
    assert len(set(tourism.keys())) == 304
    first = tourism.series[0]
    assert first.key == "Adelaide/South Australia/Business"
    assert first.values.dtype == np.float32
    assert first.values[0] == pytest.approx(135.0776903)
    assert _index(tourism, 0)[[0, -1]].tolist() == [pd.Timestamp("1998-01-01"), pd.Timestamp("2017-10-01")]


def test_vic_elec_is_one_half_hourly_series_with_temperature() -> None:
    s = load_vic_elec()
    assert (s.frequency, s.season_length, len(s)) == ("30min", 48, 1)
    elec = s.series[0]
    assert len(elec) == 52608 and elec.start == "2011-12-31T13:00:00+00:00"
    assert set(elec.covariates) == {"Temperature", "Holiday"}
    assert all(len(c) == len(elec) for c in elec.covariates.values())
    assert elec.covariates["Temperature"][0] == pytest.approx(21.4)
    assert np.isfinite(elec.values).all()


def test_aus_retail_is_monthly_with_ragged_lengths() -> None:
    s = load_aus_retail()
    lengths = [len(x) for x in s.series]
    assert (s.frequency, s.season_length, len(s)) == ("MS", 12, 152)
    assert (min(lengths), max(lengths)) == (32, 441)
    assert _index(s, 0)[-1] == pd.Timestamp("2018-12-01")


def test_epf_fr_be_is_hourly_prices_per_market() -> None:
    s = load_epf_fr_be()
    assert (s.frequency, s.season_length, s.keys()) == ("h", 24, ["BE", "FR"])
    assert {len(x) for x in s.series} == {16080}
    assert set(s.series[1].covariates) == {"gen_forecast", "system_load", "week_day"}
    assert s.series[1].values[0] == pytest.approx(53.48)
    assert _index(s, 1)[-1] == pd.Timestamp("2016-10-31 23:00")


# --- missing values ------------------------------------------------------------------------

def _patched_tourism(monkeypatch: pytest.MonkeyPatch, edit) -> SeriesSet:
    """load_tourism over an edited copy of the shipped frame."""
    original = series_module._read
    monkeypatch.setattr(series_module, "_read", lambda c, n: edit(original(c, n).copy()))
    return load_tourism()


def _rows(df: pd.DataFrame, region: str, purpose: str) -> pd.Index:
    return df.index[(df.Region == region) & (df.Purpose == purpose)]


def test_leading_missing_values_are_dropped_and_start_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[_rows(df, "Adelaide", "Business")[:3], "Trips"] = np.nan
        return df

    s = _patched_tourism(monkeypatch, edit)
    assert len(s.series[0]) == 77 and s.series[0].start == "1998-10-01T00:00:00"
    assert len(s.series[1]) == 80


def test_interior_missing_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[_rows(df, "Adelaide", "Holiday")[40], "Trips"] = np.nan
        return df

    with pytest.raises(ValueError, match="Adelaide/South Australia/Holiday.*missing"):
        _patched_tourism(monkeypatch, edit)


def test_missing_time_stamp_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="Adelaide/South Australia/Visiting.*not regular"):
        _patched_tourism(monkeypatch, lambda df: df.drop(_rows(df, "Adelaide", "Visiting")[10]))


# --- splits --------------------------------------------------------------------------------

def test_split_holds_out_the_last_horizon_without_overlap(tourism: SeriesSet) -> None:
    train, val, test = split_by_time(tourism, horizon=8)
    assert train.keys() == val.keys() == test.keys() == tourism.keys()
    assert train.season_length == 4 and test.frequency == "QS"
    for i, full in enumerate(tourism.series):
        tr, va, te = train.series[i], val.series[i], test.series[i]
        assert (len(tr), len(va), len(te)) == (64, 8, 8)
        np.testing.assert_array_equal(te.values, full.values[-8:])
        np.testing.assert_array_equal(np.concatenate([tr.values, va.values, te.values]), full.values)
    # Each piece starts the step after the previous one ends: no overlap, no gap.
    index = _index(tourism, 0)
    assert [p.series[0].start for p in (train, val, test)] == [t.isoformat() for t in index[[0, 64, 72]]]


def test_rolling_windows_are_consecutive_and_keyed_by_window(tourism: SeriesSet) -> None:
    train, val, test = split_by_time(tourism, horizon=4, windows=3)
    assert len(test) == 3 * len(tourism)
    assert test.keys()[:3] == [f"{tourism.series[0].key}#w{i}" for i in range(3)]
    full = tourism.series[0].values
    assert len(train.series[0]) == 80 - 16
    np.testing.assert_array_equal(val.series[0].values, full[64:68])
    for i in range(3):
        np.testing.assert_array_equal(test.series[i].values, full[68 + 4 * i:72 + 4 * i])
    assert test.series[2].start == "2017-01-01T00:00:00"


def test_split_cuts_covariates_with_values() -> None:
    elec = load_vic_elec()
    train, val, test = split_by_time(elec, horizon=48)
    temperature = elec.series[0].covariates["Temperature"]
    np.testing.assert_array_equal(test.series[0].covariates["Temperature"], temperature[-48:])
    np.testing.assert_array_equal(val.series[0].covariates["Temperature"], temperature[-96:-48])
    assert len(train.series[0].covariates["Holiday"]) == len(train.series[0]) == 52608 - 96
    assert test.series[0].start == "2014-12-30T13:00:00+00:00"


def test_split_refuses_series_too_short(tourism: SeriesSet) -> None:
    with pytest.raises(ValueError, match="needs more than 80"):
        split_by_time(tourism, horizon=40)
    with pytest.raises(ValueError):
        split_by_time(tourism, horizon=0)


# --- scaler --------------------------------------------------------------------------------

def test_scaler_is_mean_absolute_and_round_trips() -> None:
    scaler = MeanAbsScaler()
    context = np.array([2.0, -4.0, 6.0], dtype=np.float32)
    scale = scaler.fit(context)
    assert scale == Scale(loc=0.0, scale=4.0)
    scaled = scaler.transform(context, scale)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [0.5, -1.0, 1.5])
    np.testing.assert_array_equal(scaler.inverse(scaled, scale), context)
    quantiles = np.arange(12, dtype=np.float64).reshape(3, 4)  # (Q, H) model outputs
    np.testing.assert_allclose(scaler.inverse(scaler.transform(quantiles, scale), scale), quantiles)


def test_centred_scaler_subtracts_the_mean() -> None:
    scale = MeanAbsScaler(center=True).fit(np.array([1.0, 3.0]))
    assert scale == Scale(loc=2.0, scale=1.0)


def test_scaler_floor_keeps_zero_and_constant_series_finite() -> None:
    for scaler, context in [(MeanAbsScaler(), np.zeros(8)), (MeanAbsScaler(center=True), np.full(8, 5.0))]:
        scale = scaler.fit(context)
        assert scale.scale == scaler.min_scale
        out = scaler.transform(context, scale)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(scaler.inverse(out, scale), context)
    with pytest.raises(ValueError):
        MeanAbsScaler().fit(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        MeanAbsScaler(min_scale=0.0)


def test_scaler_manifest_form_reproduces_the_same_numbers(tourism: SeriesSet) -> None:
    trainer = MeanAbsScaler(center=True, min_scale=1e-3)
    server = MeanAbsScaler.from_manifest(json.loads(json.dumps(trainer.to_manifest())))
    assert server == trainer
    for s in tourism.series[:20]:
        context, future = s.values[:-8], s.values[-8:]
        assert server.fit(context) == trainer.fit(context)
        np.testing.assert_array_equal(server.transform(future, server.fit(context)),
                                      trainer.transform(future, trainer.fit(context)))
    with pytest.raises(ValueError):
        MeanAbsScaler.from_manifest({"type": "standard"})
