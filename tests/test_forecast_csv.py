"""Forecasters trained on a user's CSV, through the CLI as a user runs it: a monthly wide file and
an hourly long one are trained (tiny), scored beside the statistical baselines, exported and
served by a real server; the hourly one is scored again by `evaluate-forecast --csv`. Bad
files are refused with exit code 2 and the row, column or series at fault; frequency, season
and horizon are inferred from the time stamps."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from seqcast.bundle.manifest import Manifest
from seqcast.client import SeqcastClient
from seqcast.client.series_csv import read_series_csv
from seqcast.export.cli import main as seqcast
from seqcast.export.config import CsvSource
from seqcast.export.forecast.csv_source import default_horizon, resolve, season_for
from seqcast.export.forecast.data import TASKS, csv_task
from seqcast.export.forecast.metrics import BASELINES

from conftest import ServerThread, start_server

TINY = ["--d-model", "16", "--n-heads", "2", "--layers", "1", "--d-ff", "32", "--steps", "30", "--eval-every", "30",
        "--batch-size", "32", "--warmup-steps", "5", "--lr", "5e-3", "--threads", "2"]
RNG = np.random.default_rng(0)


def _seasonal(n: int, season: int, level: float) -> np.ndarray:
    t = np.arange(n)
    return level + 0.2 * level * np.sin(2 * np.pi * t / season) + 0.02 * t + RNG.normal(0, 0.02 * level, n)


def _months(n: int) -> list[str]:
    return [f"{2015 + i // 12}-{i % 12 + 1:02d}-01" for i in range(n)]


def write_monthly_wide(path: Path) -> None:
    """Three series over 96 months; "east" starts 12 months late (its first cells empty)."""
    north, south, east = (_seasonal(96, 12, level) for level in (100.0, 250.0, 40.0))
    rows = ["month,north,south,east"]
    for i, month in enumerate(_months(96)):
        rows.append(f"{month},{north[i]:.2f},{south[i]:.2f},{'' if i < 12 else f'{east[i]:.2f}'}")
    path.write_text("\n".join(rows) + "\n")


def write_hourly_long(path: Path) -> None:
    """Two stores over 5 days of hours, one row per store and hour, rows shuffled."""
    start = datetime(2024, 3, 1)
    rows = [(store, (start + timedelta(hours=h)).isoformat(), v)
            for store, level in (("store-a", 50.0), ("store-b", 80.0))
            for h, v in enumerate(_seasonal(120, 24, level))]
    order = RNG.permutation(len(rows))
    path.write_text("store,time,load\n" + "".join(f"{rows[i][0]},{rows[i][1]},{rows[i][2]:.3f}\n" for i in order))


@dataclass(frozen=True)
class Case:
    write: Callable[[Path], None]
    flags: list[str]
    frequency: str
    season: int
    horizon: int


CASES = {
    # The horizon is left to the default for monthly data (18); the hourly one is given.
    "monthly-wide": Case(write_monthly_wide, [], "MS", 12, 18),
    "hourly-long": Case(write_hourly_long, ["--id-column", "store", "--value-column", "load", "--time-column", "time",
                                            "--horizon", "12"], "h", 24, 12),
}


@dataclass(frozen=True)
class Trained:
    csv: Path
    run_dir: Path
    stdout: str


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = seqcast(["--log-level", "WARNING", *argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    root = tmp_path_factory.mktemp("csv-runs")
    result = {}
    for name, case in CASES.items():
        csv = root / f"{name}.csv"
        case.write(csv)
        code, stdout = _run(["train-forecast", "--csv", str(csv), *case.flags, "--run-dir", str(root / name), *TINY])
        assert code == 0, stdout
        result[name] = Trained(csv, root / name, stdout)
    return result


SERVED = "hourly-long"
HOURLY_FLAGS = CASES[SERVED].flags


@pytest.fixture(scope="module")
def models(trained: dict[str, Trained], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("csv-models")
    for name in CASES:
        code, stdout = _run(["export", "--run-dir", str(trained[name].run_dir), "--models-dir", str(root), "--name", name])
        assert code == 0 and stdout.strip() == str(root / name / "1")
    return root


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[ServerThread]:
    srv = start_server(models, default_model="", default_forecast_model=SERVED)
    yield srv
    srv.stop()


@pytest.mark.parametrize("name", CASES)
def test_training_ends_with_the_model_beside_every_baseline_on_the_last_horizon(trained, name) -> None:
    run, case = trained[name], CASES[name]
    n_series = 3 if name == "monthly-wide" else 2
    assert f"{name}: {n_series} test windows of {case.horizon} steps (season {case.season})" in run.stdout
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")][1:]
    systems = [line.split(" | ")[0].lstrip("| ") for line in table]
    assert systems == [*BASELINES, f"{name} (transformer)"]
    scores = json.loads((run.run_dir / "test_scores.json").read_text())
    assert [s["system"] for s in scores] == systems
    for s in scores:
        assert all(math.isfinite(s[k]) for k in ("mase", "smape", "wql", "relative_mase")), s
    assert scores[0]["relative_mase"] == 1.0  # SeasonalNaive against itself


@pytest.mark.parametrize("name", CASES)
def test_the_run_config_records_the_csv_task(trained, name) -> None:
    run, case = trained[name], CASES[name]
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["data"] == "csv"
    csv = config["csv"]
    assert csv["path"] == str(run.csv.resolve())
    assert (csv["frequency"], csv["season_length"], csv["horizon"]) == (case.frequency, case.season, case.horizon)
    assert csv["id_column"] == ("store" if name == "hourly-long" else None)


@pytest.mark.parametrize("name", CASES)
def test_the_exported_csv_model_serves_forecasts_of_its_horizon(trained, models, server, name) -> None:
    case = CASES[name]
    manifest = Manifest.read(models / name / "1")
    spec = manifest.forecast
    min_context = max(2 * case.season, case.horizon)  # csv_task's rule
    assert (spec.frequency, spec.season_length, spec.max_horizon, spec.min_context) == (
        case.frequency, case.season, case.horizon, min_context)
    assert manifest.training["data"] == "csv"
    layout = {"id_column": "store", "value_column": "load", "time_column": "time"} if name == "hourly-long" else {}
    series = read_series_csv(trained[name].csv, **layout)
    with SeqcastClient(server.target) as client:
        result = client.forecast([s.values for s in series], horizon=case.horizon, model=name)
    assert result.model == name and len(result.forecasts) == (2 if name == "hourly-long" else 3)
    for forecast in result.forecasts:
        assert len(forecast.point) == case.horizon and np.isfinite(forecast.point).all()
        assert sorted(forecast.quantiles) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])


def test_evaluate_forecast_scores_the_bundle_on_its_csv_as_training_scored_the_run(trained, models, tmp_path) -> None:
    run = trained[SERVED]
    out = tmp_path / "scores.json"
    code, stdout = _run(["evaluate-forecast", str(models / SERVED / "1"), "--csv", str(run.csv), *HOURLY_FLAGS,
                         "--json", str(out)])
    assert code == 0 and f"{SERVED}: 2 test windows of 12 steps" in stdout
    scores = {s["system"]: s for s in json.loads(out.read_text())}
    assert list(scores) == [*BASELINES, f"{SERVED} (transformer)"]
    at_training = json.loads((run.run_dir / "test_scores.json").read_text())
    assert [s["mase"] for s in at_training[:-1]] == [s["mase"] for s in list(scores.values())[:-1]]
    # The bundle (ONNX Runtime) scores what the run (PyTorch) scored at the end of training.
    assert scores[f"{SERVED} (transformer)"]["mase"] == pytest.approx(at_training[-1]["mase"], rel=1e-4)


# --- bad files -----------------------------------------------------------------------------

def _wide(rows: list[str]) -> str:
    return "month,sales\n" + "".join(f"{row}\n" for row in rows)


def _monthly(n: int) -> list[str]:
    """Rows "time,value"; row k of the list is line k + 2 of the file (line 1 is the header)."""
    return [f"{t},{i}" for i, t in enumerate(_months(n))]


def _days(shop: str, n: int, skip: int | None = None) -> str:
    start = datetime(2024, 1, 1)
    return "".join(f"{shop},{(start + timedelta(days=i)).date().isoformat()},{i % 7 + 1}\n" for i in range(n) if i != skip)


def _weeks(shop: str, n: int) -> str:
    return "".join(f"{shop},{(datetime(2024, 1, 1) + timedelta(weeks=i)).date().isoformat()},{i}\n" for i in range(n))


LONG = ["--id-column", "shop", "--value-column", "sales", "--time-column", "day"]
HEADER = "shop,day,sales\n"
BAD_FILES = {
    # name: (file, flags, fragments the error must hold)
    "no numeric column": ("month,region\n" + "".join(f"{t},r{i}\n" for i, t in enumerate(_months(90))), [],
                          ["line 1", "no column holds numbers"]),
    "non-numeric value column": (HEADER + _days("a", 60) + "a,2024-03-01,n/a\n", LONG,
                                 ["line 62", "column 'sales'", "'n/a' is not a number"]),
    "duplicate time stamp (wide)": (_wide(_monthly(90)[:50] + ["2019-02-01,7"] + _monthly(90)[50:]), [],
                                    ["line 52", "column 'month'", "series 'sales' has a second row for 2019-02-01",
                                     "first on line 51"]),
    "duplicate time stamp (long)": (HEADER + _days("a", 60) + _days("b", 60) + "b,2024-01-05,9\n", LONG,
                                    ["line 122", "column 'day'", "series 'b' has a second row for 2024-01-05",
                                     "first on line 66"]),
    "series too short": (HEADER + _days("a", 80) + _days("b", 40), LONG + ["--horizon", "14"],
                         ["series 'b' has 40 values", "horizon 14 needs at least 56"]),
    "unparsable time stamp": (_wide(_monthly(90)[:40] + ["2018/03/01,5"] + _monthly(90)[41:]), [],
                              ["line 42", "column 'month'", "'2018/03/01' is not an ISO 8601 date"]),
    "missing time stamp": (HEADER + _days("a", 60) + _days("b", 60, skip=30), LONG,
                           ["line 92", "column 'day'", "series 'b': time stamp 2024-02-01 follows 2024-01-30 (line 91)",
                            "frequency D gives 2024-01-31"]),
    "mid-month time stamps": (_wide([f"{t[:8]}15,{i}" for i, t in enumerate(_months(90))]), [],
                              ["line 4", "column 'month'", "series 'sales': the time stamps 2015-01-15, 2015-02-15, "
                               "2015-03-15 are not evenly spaced", "first or the last day of a month"]),
    "two frequencies": (HEADER + _days("a", 60) + _weeks("b", 60), LONG,
                        ["column 'day'", "series 'a' steps by D but series 'b' by W-MON"]),
    "no time stamps": ("a,b\n" + "".join(f"{i},{i + 1}\n" for i in range(90)), [], ["no time stamps", "--time-column"]),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_csv_is_refused_naming_the_row_column_or_series(case, tmp_path, capsys) -> None:
    text, flags, fragments = BAD_FILES[case]
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    run_dir = tmp_path / "run"
    assert seqcast(["--log-level", "WARNING", "train-forecast", "--csv", str(csv), *flags, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {csv.resolve()}") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not run_dir.exists(), "a refused file leaves no run directory"


def test_bad_flags_and_a_missing_file_are_refused(tmp_path, capsys) -> None:
    run_dir = str(tmp_path / "run")
    assert seqcast(["train-forecast", "--data", "tourism", "--horizon", "4", "--run-dir", run_dir]) == 2
    assert "error: --horizon needs --csv FILE" in capsys.readouterr().err
    csv = tmp_path / "sales.csv"
    csv.write_text(_wide(_monthly(90)))
    assert seqcast(["train-forecast", "--csv", str(csv), "--frequency", "monthly", "--run-dir", run_dir]) == 2
    assert "error: frequency 'monthly' is not a pandas offset alias" in capsys.readouterr().err
    missing = tmp_path / "nope.csv"
    assert seqcast(["train-forecast", "--csv", str(missing), "--run-dir", run_dir]) == 2
    assert f"error: {missing.resolve()}: No such file or directory" in capsys.readouterr().err


# --- inference -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("frequency", "season", "horizon"),
    [("YS", 1, 6), ("QS", 4, 8), ("QE-DEC", 4, 8), ("MS", 12, 18), ("ME", 12, 18), ("3MS", 4, 4), ("W", 52, 13),
     ("D", 7, 14), ("B", 5, 5), ("h", 24, 48), ("2h", 12, 12), ("30min", 48, 48), ("15min", 96, 96), ("7D", 1, 6)],
)
def test_season_and_default_horizon_follow_the_frequency(frequency, season, horizon) -> None:
    assert (season_for(frequency), default_horizon(frequency)) == (season, horizon)


def _range(start: str, periods: int, freq: str, tz: str | None = None) -> list[str]:
    import pandas as pd

    times = pd.date_range(start, periods=periods, freq=freq, tz="UTC" if tz else None)
    return [t.isoformat() for t in (times.tz_convert(tz) if tz else times)]


@pytest.mark.parametrize(
    ("times", "frequency", "season", "horizon"),
    [
        (_range("2000-01-01", 80, "QS"), "QS", 4, 8),
        (_range("2000-02-01", 80, "QS-NOV"), "QS-NOV", 4, 8),  # quarters from February keep their anchor
        (_range("2010-01-31", 120, "ME"), "ME", 12, 18),
        (_range("2023-01-01", 200, "W-SUN"), "W", 52, 13),
        (_range("2023-01-01", 200, "D"), "D", 7, 14),
        (_range("2024-03-01", 300, "h"), "h", 24, 48),
        # Melbourne local time across the end of daylight saving (+11:00, then +10:00): regular in UTC.
        (_range("2024-04-03", 400, "30min", tz="Australia/Melbourne"), "30min", 48, 48),
    ],
)
def test_frequency_season_and_horizon_are_inferred_from_the_time_stamps(times, frequency, season, horizon, tmp_path) -> None:
    csv = tmp_path / "series.csv"
    csv.write_text("time,value\n" + "".join(f"{t},{i % 5}\n" for i, t in enumerate(times)))
    source = resolve(CsvSource(str(csv)))
    assert (source.frequency, source.season_length, source.horizon) == (frequency, season, horizon)
    given = resolve(CsvSource(str(csv), season_length=3, horizon=5))
    assert (given.frequency, given.season_length, given.horizon) == (frequency, 3, 5)


def test_the_context_rule_gives_tourism_its_own_context() -> None:
    task = csv_task(CsvSource("tourism.csv", frequency="QS", season_length=4, horizon=8))
    tourism = TASKS["tourism"]
    assert (task.context_length, task.min_context, task.horizon, task.test_windows) == (
        tourism.context_length, tourism.min_context, tourism.horizon, tourism.test_windows)
