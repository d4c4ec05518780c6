"""Series to forecast, read from a CSV file with the standard library's `csv` module.

Two layouts:

- wide (the default): a header row, then one row per time step. Every column whose cells are all
  numbers is one series, named by its header; empty cells may only open a column (a series that
  starts later). The first other column whose first cell is an ISO 8601 date or datetime gives the
  time stamps. Columns with an empty header (an index, as pandas writes one) are never series.
- long: one row per (series, time step); an id column names the series and a value column holds
  its values. Series come in order of first appearance, each one's rows in file order, or sorted
  by the time column when there is one.

Every problem raises `SeriesCsvError` naming the file, the line and the column.
"""

from __future__ import annotations

import calendar
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


class SeriesCsvError(ValueError):
    """A CSV file that does not hold series as expected; the message says where and why."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None, column: str | None = None) -> None:
        where = [str(path)]
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {problem}")
        self.path = str(path)
        self.line = line
        self.column = column


@dataclass(frozen=True)
class NamedSeries:
    """One series: its values oldest first and, when the file has them, one time stamp per value.

    `lines` (the file line of each value) and `time_column` (where the time stamps came from)
    let later checks, such as training's regular-frequency check, name the row at fault; they
    take no part in comparisons.
    """

    name: str
    values: list[float]
    times: list[datetime] | None = None
    lines: list[int] | None = field(default=None, compare=False, repr=False)
    time_column: str | None = field(default=None, compare=False)

    def future_times(self, horizon: int) -> list[datetime] | None:
        """Time stamps of the `horizon` steps after the last value; None without two time stamps.

        The step is the one between the last two time stamps, in calendar months when both fall
        on the same day of the month (or both on a month's last day), so monthly and quarterly
        series stay on their day.
        """
        if self.times is None or len(self.times) < 2:
            return None
        before, last = self.times[-2], self.times[-1]
        months = (last.year - before.year) * 12 + last.month - before.month
        month_end = _is_month_end(before) and _is_month_end(last)
        if months > 0 and (before.day == last.day or month_end) and before.timetz() == last.timetz():
            return [_add_months(last, months * k, month_end) for k in range(1, horizon + 1)]
        step = last - before
        return [last + step * k for k in range(1, horizon + 1)]


def read_series_csv(
    path: str | Path,
    columns: Sequence[str] = (),
    id_column: str | None = None,
    value_column: str | None = None,
    time_column: str | None = None,
) -> list[NamedSeries]:
    """Reads the series of a CSV file: wide by default, long when `id_column` and `value_column` are given.

    Wide: `columns` picks series columns by header (default: every numeric column) and
    `time_column` the time column (default: found as the module docstring says).
    Raises `SeriesCsvError` for a file that holds no series as asked, and `OSError` when the file
    cannot be read.
    """
    if (id_column is None) != (value_column is None):
        raise ValueError("the long layout needs both an id column and a value column")
    if id_column is not None and columns:
        raise ValueError("selecting columns applies to the wide layout; the long layout has an id column")
    table = _Table.read(path)
    if id_column is not None and value_column is not None:
        return _long(table, id_column, value_column, time_column)
    return _wide(table, columns, time_column)


@dataclass(frozen=True)
class _Table:
    """A CSV file's header and data rows, each row with its line number in the file."""

    path: str
    header_line: int
    header: list[str]
    rows: list[tuple[int, list[str]]]  # (line, cells stripped and padded to the header's width)

    @classmethod
    def read(cls, path: str | Path) -> _Table:
        # utf-8-sig drops the byte-order mark spreadsheet programs write.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                # Blank lines (and rows of empty cells, as spreadsheets export them) are not rows.
                lines = [(reader.line_num, [c.strip() for c in row]) for row in reader if any(c.strip() for c in row)]
            except csv.Error as e:
                raise SeriesCsvError(path, f"not readable as CSV ({e})", reader.line_num) from None
            except UnicodeDecodeError as e:
                raise SeriesCsvError(path, f"not UTF-8 text ({e.reason}); save it as UTF-8") from None
        if not lines:
            raise SeriesCsvError(path, "the file is empty; it needs a header row and at least one data row")
        (header_line, header), rows = lines[0], lines[1:]
        if not rows:
            raise SeriesCsvError(path, "no data rows after the header", header_line)
        seen: dict[str, int] = {}
        for i, name in enumerate(header):
            if name and name in seen:
                raise SeriesCsvError(
                    path, f"two columns are named {name!r} (columns {seen[name] + 1} and {i + 1})", header_line
                )
            seen[name] = i
        for line, row in rows:
            if len(row) > len(header):
                raise SeriesCsvError(path, f"{len(row)} cells but the header has {len(header)} columns", line)
        width = len(header)
        return cls(str(path), header_line, header, [(line, row + [""] * (width - len(row))) for line, row in rows])

    def index(self, name: str) -> int:
        if name not in self.header:
            known = ", ".join(repr(h) for h in self.header if h)
            raise SeriesCsvError(self.path, f"no column {name!r}; the header has {known}", self.header_line)
        return self.header.index(name)

    def cells(self, index: int) -> list[tuple[int, str]]:
        return [(line, row[index]) for line, row in self.rows]


def _wide(table: _Table, columns: Sequence[str], time_column: str | None) -> list[NamedSeries]:
    if time_column is not None:
        time_index: int | None = table.index(time_column)
    else:
        time_index = next((i for i in range(len(table.header)) if _is_time_column(table.cells(i))), None)
    if columns:
        picked = [table.index(name) for name in columns]
        for i in picked:
            first = _first_filled(table.cells(i))
            if first is None:
                raise SeriesCsvError(table.path, "the column is empty", table.header_line, table.header[i])
            if not _starts_with_number(table.cells(i)):
                problem = f"{first[1]!r} is not a number; the column holds no series"
                raise SeriesCsvError(table.path, problem, first[0], table.header[i])
    else:
        picked = [
            i for i, name in enumerate(table.header)
            if name and i != time_index and _starts_with_number(table.cells(i))
        ]
        if not picked:
            problem = "no column holds numbers; a series column needs a number in every row"
            raise SeriesCsvError(table.path, problem, table.header_line)
    times = _times(table, time_index) if time_index is not None else None
    time_name = table.header[time_index] if time_index is not None else None
    result = []
    for i in picked:
        start, values = _numbers(table, i)
        lines = [line for line, _ in table.rows[start:]]
        result.append(NamedSeries(table.header[i], values, times[start:] if times is not None else None, lines, time_name))
    return result


def _long(table: _Table, id_column: str, value_column: str, time_column: str | None) -> list[NamedSeries]:
    ids, values = table.index(id_column), table.index(value_column)
    times = _times(table, table.index(time_column)) if time_column is not None else None
    rows: dict[str, list[tuple[int, float, datetime | None]]] = {}  # insertion order: first appearance
    for k, (line, row) in enumerate(table.rows):
        if not row[ids]:
            raise SeriesCsvError(table.path, "empty series id; every row needs one", line, id_column)
        value = _number(table.path, line, value_column, row[values])
        rows.setdefault(row[ids], []).append((line, value, times[k] if times is not None else None))
    result = []
    for name, points in rows.items():
        if times is not None:
            points.sort(key=lambda p: p[2])  # stable: the duplicate check below reports file order
            for (first, _, t), (second, _, u) in zip(points, points[1:]):
                if t == u:
                    raise SeriesCsvError(
                        table.path, f"series {name!r} has a second row for {t.isoformat()} (first on line {first})",
                        second, time_column,
                    )
        series_times = [t for _, _, t in points] if times is not None else None
        result.append(NamedSeries(name, [v for _, v, _ in points], series_times, [line for line, _, _ in points], time_column))
    return result


def _numbers(table: _Table, index: int) -> tuple[int, list[float]]:
    """(position of the first value, the values) of a series column; empty cells only before it."""
    cells = table.cells(index)
    start = next(k for k, (_, cell) in enumerate(cells) if cell)
    name = table.header[index]
    for line, cell in cells[start:]:
        if not cell:
            raise SeriesCsvError(
                table.path, "empty cell after the series has started; only the first cells of a column may be empty",
                line, name,
            )
    return start, [_number(table.path, line, name, cell) for line, cell in cells[start:]]


def _number(path: str, line: int, column: str, cell: str) -> float:
    if not cell:
        raise SeriesCsvError(path, "empty cell; every row needs a value", line, column)
    try:
        value = float(cell)
    except ValueError:
        raise SeriesCsvError(path, f"{cell!r} is not a number", line, column) from None
    if not math.isfinite(value):
        raise SeriesCsvError(path, f"{cell!r} is not a finite number", line, column)
    return value


def _times(table: _Table, index: int) -> list[datetime]:
    name = table.header[index]
    times: list[datetime] = []
    for line, cell in table.cells(index):
        if not cell:
            raise SeriesCsvError(table.path, "empty time stamp; every row needs one", line, name)
        try:
            t = datetime.fromisoformat(cell)
        except ValueError:
            raise SeriesCsvError(
                table.path, f"{cell!r} is not an ISO 8601 date or datetime (e.g. 2024-01-31 or 2024-01-31T12:30)",
                line, name,
            ) from None
        # Naive and zone-aware time stamps cannot be ordered or subtracted.
        if times and (t.tzinfo is None) != (times[0].tzinfo is None):
            problem = f"{cell!r} and the first time stamp differ in having a time zone"
            raise SeriesCsvError(table.path, problem, line, name)
        times.append(t)
    return times


def _first_filled(cells: list[tuple[int, str]]) -> tuple[int, str] | None:
    return next(((line, cell) for line, cell in cells if cell), None)


def _starts_with_number(cells: list[tuple[int, str]]) -> bool:
    first = _first_filled(cells)
    if first is None:
        return False
    try:
        float(first[1])
    except ValueError:
        return False
    return True


def _is_time_column(cells: list[tuple[int, str]]) -> bool:
    """Whether the column's first cell is a time stamp (and not a number, e.g. 20240131)."""
    if not cells[0][1] or _starts_with_number(cells):
        return False
    try:
        datetime.fromisoformat(cells[0][1])
    except ValueError:
        return False
    return True


def _is_month_end(t: datetime) -> bool:
    return t.day == calendar.monthrange(t.year, t.month)[1]


def _add_months(t: datetime, months: int, month_end: bool) -> datetime:
    year, month = divmod(t.month - 1 + months, 12)
    year, month = t.year + year, month + 1
    days = calendar.monthrange(year, month)[1]
    return t.replace(year=year, month=month, day=days if month_end else min(t.day, days))
