"""Users' CSV files as forecasting data (`seqcast train-forecast --csv`).

The file is read by the client's reader (`seqcast.client.series_csv`: the wide and long layouts
`seqcast-client forecast --csv` reads), so training and forecasting accept the same files. This
module adds what training needs on top: time stamps in every series, one regular frequency
shared by all series (inferred by `pandas.infer_freq` unless given), and the season length and
default horizon that follow from the frequency:

| frequency (pandas alias) | season | default horizon |
|---|---:|---:|
| yearly (`YS`, `YE`) | 1 | 6 |
| quarterly (`QS`, `QE`) | 4 | 8 |
| monthly (`MS`, `ME`) | 12 | 18 |
| semi-monthly (`SMS`, `SME`) | 24 | 24 |
| weekly (`W`) | 52 | 13 |
| daily (`D`) | 7 | 14 |
| business daily (`B`) | 5 | 5 |
| hourly (`h`) | 24 | 48 |
| by minutes (`30min`, `15min`, ...) | steps in a day (48, 96, ...) | one season |

A multiple of a unit divides its season (`3MS`: 4, `2h`: 12) when it divides evenly, else the
season is 1. Horizons are the M4 competition's for its six frequencies, otherwise one season
(6 without a season). Any other frequency has season 1 unless `--season-length` is given.

Every problem raises `SeriesCsvError` (a `ValueError`) naming the file and, where there is one,
the line, the column and the series.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from seqcast.client.series_csv import NamedSeries, SeriesCsvError, read_series_csv
from seqcast.export.config import CsvSource
from seqcast.export.forecast.series import Series, SeriesSet

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# The unit of a pandas offset (its rule code before any anchor, e.g. "QS" of "QS-OCT").
_UNITS = {
    "YS": "Y", "YE": "Y", "BYS": "Y", "BYE": "Y", "QS": "Q", "QE": "Q", "BQS": "Q", "BQE": "Q",
    "MS": "M", "ME": "M", "BMS": "M", "BME": "M", "SMS": "SM", "SME": "SM", "W": "W", "D": "D", "B": "B",
    "h": "h", "min": "min",
}
# Steps of one unit in its natural cycle: a year, a week or a day.
_CYCLE = {"Y": 1, "Q": 4, "M": 12, "SM": 24, "W": 52, "D": 7, "B": 5, "h": 24, "min": 24 * 60}
# The M4 competition's horizons.
_M4_HORIZON = {"Y": 6, "Q": 8, "M": 18, "W": 13, "D": 14, "h": 48}


def _offset(frequency: str) -> pd.DateOffset:
    from pandas.tseries.frequencies import to_offset

    try:
        return to_offset(frequency)
    except ValueError:
        raise ValueError(f"frequency {frequency!r} is not a pandas offset alias (e.g. MS, QS, W, D, h, 30min)") from None


def _unit(frequency: str) -> tuple[str | None, int]:
    """(unit, multiple) of a frequency: ("Q", 1) for "QS-OCT", ("min", 30) for "30min"."""
    offset = _offset(frequency)
    return _UNITS.get(offset.rule_code.split("-")[0]), offset.n


def season_for(frequency: str) -> int:
    """The season length of a frequency (the module docstring's table); 1 when it has none."""
    unit, n = _unit(frequency)
    cycle = _CYCLE.get(unit or "", 1)
    return cycle // n if n > 0 and cycle % n == 0 else 1


def default_horizon(frequency: str) -> int:
    """The horizon used when none is given: M4's for its frequencies, else one season (or 6)."""
    unit, n = _unit(frequency)
    if n == 1 and unit in _M4_HORIZON:
        return _M4_HORIZON[unit]
    season = season_for(frequency)
    return season if season > 1 else 6


@dataclass(frozen=True, eq=False)
class _Stamped:
    """One series of the file, sorted by time: values (T,), time stamps and file lines."""

    name: str
    values: np.ndarray
    times: pd.DatetimeIndex
    lines: list[int]


def resolve(source: CsvSource) -> CsvSource:
    """`source` with the frequency, season length and horizon filled in where they are None.

    Reads and checks the file (time stamps, one regular frequency), so a bad file fails here,
    before a run directory is made.
    """
    _, frequency = _read_regular(source)
    season = source.season_length or season_for(frequency)
    horizon = source.horizon or default_horizon(frequency)
    if source.frequency is None:
        log.info("%s: frequency %s (inferred), season %d, horizon %d", source.path, frequency, season, horizon)
    return replace(source, frequency=frequency, season_length=season, horizon=horizon)


def load_csv(source: CsvSource) -> SeriesSet:
    """The series of a resolved source (see `resolve`) as a `SeriesSet` named after the file."""
    if source.frequency is None or source.season_length is None:
        raise ValueError("load_csv needs a resolved source (frequency and season length)")
    series, frequency = _read_regular(source)
    return SeriesSet(
        Path(source.path).stem, frequency, source.season_length,
        [Series(s.name, s.values.astype(np.float32), s.times[0].isoformat()) for s in series],
    )


def _read_regular(source: CsvSource) -> tuple[list[_Stamped], str]:
    """The file's series, each sorted and checked, and the frequency all of them follow."""
    named = read_series_csv(
        source.path, source.columns, id_column=source.id_column, value_column=source.value_column,
        time_column=source.time_column,
    )
    series = [_stamped(source.path, s) for s in named]
    time_column = named[0].time_column
    frequency = source.frequency or _infer_frequency(source.path, series, time_column)
    offset = _offset(frequency)
    for s in series:
        _check_regular(source.path, s, frequency, offset, time_column)
    return series, frequency


def _stamped(path: str, s: NamedSeries) -> _Stamped:
    """A read series with pandas time stamps (UTC when zone-aware), sorted, duplicates refused."""
    import pandas as pd

    if s.times is None:
        raise SeriesCsvError(
            path, "no time stamps: training holds out the end of each series by time, so it needs a column "
            "of ISO 8601 dates or datetimes (name it with --time-column)",
        )
    aware = s.times[0].tzinfo is not None
    times = pd.DatetimeIndex(pd.to_datetime(s.times, utc=aware))
    lines = s.lines if s.lines is not None else list(range(len(s.values)))
    order = np.argsort(times.asi8, kind="stable")
    times, values, lines = times[order], np.asarray(s.values, np.float64)[order], [lines[i] for i in order]
    for i in np.flatnonzero(times[1:] == times[:-1]):
        raise SeriesCsvError(
            path, f"series {s.name!r} has a second row for {_shown(times[i + 1])} (first on line {lines[i]})",
            lines[i + 1], s.time_column,
        )
    return _Stamped(s.name, values, times, lines)


def _shown(t: pd.Timestamp) -> str:
    """A time stamp as the file would write it: a date alone when it has no time of day."""
    return t.date().isoformat() if t.tzinfo is None and t == t.normalize() else t.isoformat()


def _infer_frequency(path: str, series: list[_Stamped], time_column: str | None) -> str:
    """The one frequency every series of three or more time stamps follows, in its shortest alias."""
    import pandas as pd

    found: dict[str, str] = {}  # frequency -> the first series that follows it
    for s in sorted(series, key=lambda s: len(s.times), reverse=True):
        if len(s.times) < 3:
            continue
        frequency = pd.infer_freq(s.times)
        if frequency is None:
            _raise_irregular(path, s, time_column)
        found.setdefault(_shortest_alias(frequency, s.times), s.name)
    if not found:
        raise SeriesCsvError(path, "too few time stamps to infer the frequency (pandas needs three); "
                                   "give it with --frequency")
    if len(found) > 1:
        (f, a), (g, b) = list(found.items())[:2]
        raise SeriesCsvError(path, f"series {a!r} steps by {f} but series {b!r} by {g}; "
                                   "all series of a file need one frequency", None, time_column)
    return next(iter(found))


def _shortest_alias(frequency: str, times: pd.DatetimeIndex) -> str:
    """"QS" for "QS-OCT" when quarters start in January: the anchor is dropped when the
    unanchored alias gives the same time stamps (as the built-in tasks name theirs)."""
    import pandas as pd

    base = frequency.split("-")[0]
    if base != frequency and pd.date_range(times[0], periods=len(times), freq=base).equals(times):
        return base
    return frequency


def _raise_irregular(path: str, s: _Stamped, time_column: str | None) -> NoReturn:
    """Raises naming the first time stamp that breaks the step of the longest regular start."""
    import pandas as pd

    if pd.infer_freq(s.times[:3]) is None:
        first = ", ".join(_shown(t) for t in s.times[:3])
        raise SeriesCsvError(path, f"series {s.name!r}: the time stamps {first} are not evenly spaced at any "
                                   "pandas frequency (monthly and quarterly data must fall on the first or the last "
                                   "day of a month)", s.lines[2], time_column)
    # The longest regular prefix (a prefix of a regular prefix is regular), by bisection.
    low, high = 3, len(s.times) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if pd.infer_freq(s.times[:middle]) is not None:
            low = middle
        else:
            high = middle - 1
    frequency = pd.infer_freq(s.times[:low])
    expected = pd.date_range(s.times[0], periods=low + 1, freq=frequency)[-1]
    raise SeriesCsvError(path, _off_step(s, low, frequency, expected), s.lines[low], time_column)


def _off_step(s: _Stamped, i: int, frequency: str, expected: pd.Timestamp) -> str:
    return (f"series {s.name!r}: time stamp {_shown(s.times[i])} follows {_shown(s.times[i - 1])} (line {s.lines[i - 1]}), "
            f"where the step of frequency {frequency} gives {_shown(expected)}: a time stamp is missing or irregular")


def _check_regular(path: str, s: _Stamped, frequency: str, offset: pd.DateOffset, time_column: str | None) -> None:
    """Raises naming the first time stamp off the series' grid at `frequency`."""
    import pandas as pd

    if not offset.is_on_offset(s.times[0]):
        raise SeriesCsvError(path, f"series {s.name!r}: time stamp {_shown(s.times[0])} is not on the "
                                   f"{frequency} grid", s.lines[0], time_column)
    expected = pd.date_range(s.times[0], periods=len(s.times), freq=frequency)
    if not expected.equals(s.times):
        i = int(np.argmax(expected != s.times))
        raise SeriesCsvError(path, _off_step(s, i, frequency, expected[i]), s.lines[i], time_column)
