"""Forecasting in the client library and `seqcast-client forecast`, without a server.

`SeqcastClient` runs over a scripted channel that answers each RPC with a canned message (after a
round trip through the wire format) or a failed call; the command line runs with the client's
methods replaced by canned results. CSV files are real files; plots are real PNGs.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message

from seqcast.client.cli import format_forecasts, forecasts_json, main
from seqcast.client.client import (
    ForecastInfo,
    ForecastResult,
    ModelInfo,
    SeqcastClient,
    SeqcastError,
    SeriesForecast,
)
from seqcast.client.plot import MAX_PANELS, MatplotlibMissingError, plot_forecasts
from seqcast.client.series_csv import NamedSeries, SeriesCsvError, read_series_csv
from seqcast.v1 import seqcast_pb2

FORECAST = "/seqcast.v1.Forecasting/Forecast"
LIST_MODELS = "/seqcast.v1.Models/ListModels"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FailedCall(grpc.RpcError, grpc.Call):
    """What a failed unary call raises: an RpcError that is also a grpc.Call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    # The rest of grpc.Call; the client never asks.
    def initial_metadata(self) -> None:
        return None

    def trailing_metadata(self) -> None:
        return None

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class ScriptedChannel:
    """Stands in for a grpc.Channel: a unary call records its request and timeout, then returns the
    scripted response for its method or raises the scripted failure."""

    def __init__(self, answers: dict[str, Message | FailedCall]) -> None:
        self.answers = answers
        self.requests: dict[str, Message] = {}
        self.timeouts: dict[str, float | None] = {}

    def unary_unary(self, method: str, request_serializer, response_deserializer, **_) -> Callable:
        def call(request: Message, timeout: float | None = None, **__) -> Message:
            # Through the wire format, so the test sees what a server would receive.
            self.requests[method] = type(request).FromString(request_serializer(request))
            self.timeouts[method] = timeout
            answer = self.answers[method]
            if isinstance(answer, FailedCall):
                raise answer
            return response_deserializer(answer.SerializeToString())

        return call

    def unary_stream(self, *args, **kwargs) -> None:  # TranslateStream, Health.Watch: not used here
        return None

    def close(self) -> None:
        pass


def _csv(tmp_path: Path, text: str, name: str = "series.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _quantile(level: float, values: list[float]) -> seqcast_pb2.QuantileForecast:
    return seqcast_pb2.QuantileForecast(level=level, values=values)


# --- the library: SeqcastClient.forecast and list_models ---


def test_forecast_sends_the_series_and_returns_plain_records() -> None:
    response = seqcast_pb2.ForecastResponse(
        model="tiny-tsmix",
        model_version="3",
        point="median",
        forecasts=[
            seqcast_pb2.SeriesForecast(
                point=[4.0, 5.0], quantiles=[_quantile(0.1, [3.0, 3.5]), _quantile(0.9, [5.0, 6.5])], context_used=3
            ),
            seqcast_pb2.SeriesForecast(point=[-1.0, -2.0], context_used=2),
        ],
    )
    channel = ScriptedChannel({FORECAST: response})
    client = SeqcastClient(channel=channel)  # type: ignore[arg-type]
    # NumPy rows of any float width are accepted.
    result = client.forecast([[1, 2.5, 3], np.array([0.5, 0.25], dtype=np.float32)], horizon=2, timeout=7)

    request = channel.requests[FORECAST]
    assert request.model == "" and request.horizon == 2
    assert [list(s.values) for s in request.series] == [[1.0, 2.5, 3.0], [0.5, 0.25]]
    assert channel.timeouts[FORECAST] == 7
    assert result == ForecastResult(
        model="tiny-tsmix",
        model_version="3",
        point="median",
        forecasts=[
            SeriesForecast(point=[4.0, 5.0], quantiles={0.1: [3.0, 3.5], 0.9: [5.0, 6.5]}, context_used=3),
            SeriesForecast(point=[-1.0, -2.0], quantiles={}, context_used=2),
        ],
    )
    client.forecast([[1.0]], horizon=5, model="other")
    assert channel.requests[FORECAST].model == "other" and channel.requests[FORECAST].horizon == 5


def test_forecast_errors_carry_the_status_code() -> None:
    failure = FailedCall(grpc.StatusCode.INVALID_ARGUMENT, "series[1] has 2 values; the model needs at least 8")
    client = SeqcastClient(channel=ScriptedChannel({FORECAST: failure}))  # type: ignore[arg-type]
    with pytest.raises(SeqcastError) as error:
        client.forecast([[1.0] * 8, [1.0, 2.0]], horizon=4)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error.value) == "INVALID_ARGUMENT: series[1] has 2 values; the model needs at least 8"


def test_one_flat_series_is_refused_with_a_hint() -> None:
    client = SeqcastClient(channel=ScriptedChannel({}))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass one series as \[values\]"):
        client.forecast([1.0, 2.0, 3.0], horizon=1)  # type: ignore[list-item]


def test_list_models_describes_forecast_models_and_each_tasks_default() -> None:
    info = seqcast_pb2.ForecastInfo(
        context_length=64, min_context=8, max_horizon=24, quantile_levels=[0.1, 0.5, 0.9],
        point="median", frequency="QS", season_length=4,
    )
    response = seqcast_pb2.ListModelsResponse(
        models=[
            seqcast_pb2.ModelInfo(name="en-de", task="translation", max_source_tokens=128, max_new_tokens=64),
            seqcast_pb2.ModelInfo(name="tsmix", version="2", task="forecast", forecast=info),
            seqcast_pb2.ModelInfo(name="tsgru", task="forecast", forecast=info),
        ],
        default_translation_model="en-de",
        default_forecast_model="tsmix",
    )
    client = SeqcastClient(channel=ScriptedChannel({LIST_MODELS: response}))  # type: ignore[arg-type]
    models = client.list_models()
    assert [(m.name, m.is_default) for m in models] == [("en-de", True), ("tsmix", True), ("tsgru", False)]
    assert models[0].forecast is None
    assert models[1].forecast == ForecastInfo(
        context_length=64, min_context=8, max_horizon=24, quantile_levels=[0.1, 0.5, 0.9],
        point="median", frequency="QS", season_length=4,
    )


# --- reading series from CSV ---


def test_wide_csv_with_a_time_column_and_a_late_series(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "month,north,south,note\n"
        "2024-01-01,10,,a\n"
        "2024-02-01,12.5,,b\n"
        "\n"  # blank lines are not rows
        "2024-03-01,11,20,c\n"
        "2024-04-01,-3e2,22,d\n",
    )
    north, south = read_series_csv(path)
    months = [datetime(2024, m, 1) for m in (1, 2, 3, 4)]
    assert north == NamedSeries("north", [10.0, 12.5, 11.0, -300.0], months)
    assert south == NamedSeries("south", [20.0, 22.0], months[2:])


def test_wide_csv_without_time_stamps_and_with_chosen_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,b,c\n1,2,3\n4,5,6\n")
    assert [s.name for s in read_series_csv(path)] == ["a", "b", "c"]
    assert read_series_csv(path, columns=["c", "a"]) == [NamedSeries("c", [3.0, 6.0]), NamedSeries("a", [1.0, 4.0])]


def test_pandas_index_columns_are_not_series(tmp_path: Path) -> None:
    # pandas' to_csv writes the index as a first column with an empty header.
    path = _csv(tmp_path, ",load\n0,1.5\n1,2.5\n")
    assert read_series_csv(path) == [NamedSeries("load", [1.5, 2.5])]


def test_long_csv_keeps_first_appearance_order_and_sorts_by_time(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "store,day,sales\n"
        "b,2024-01-02,5\n"
        "a,2024-01-02,2\n"
        "b,2024-01-01,4\n"
        "a,2024-01-01,1\n"
        "a,2024-01-03,3\n",
    )
    b, a = read_series_csv(path, id_column="store", value_column="sales", time_column="day")
    assert (b.name, b.values, b.times) == ("b", [4.0, 5.0], [datetime(2024, 1, 1), datetime(2024, 1, 2)])
    assert (a.name, a.values) == ("a", [1.0, 2.0, 3.0])
    # Without a time column, each series' rows stay in file order.
    b, a = read_series_csv(path, id_column="store", value_column="sales")
    assert (b.values, b.times, a.values) == ([5.0, 4.0], None, [2.0, 1.0, 3.0])


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("t,x\n2024-01-01,1\n2024-01-02,oops\n2024-01-03,3\n", {}, "series.csv, line 3, column 'x': 'oops' is not a"),
        ("x,y\n1,2\n,3\n4,5\n", {}, "series.csv, line 3, column 'x': empty cell after the series has started"),
        ("x\n1\nnan\n", {}, "series.csv, line 3, column 'x': 'nan' is not a finite number"),
        ("", {}, "series.csv: the file is empty"),
        ("\n\n", {}, "series.csv: the file is empty"),
        ("x,y\n", {}, "series.csv, line 1: no data rows after the header"),
        ("name,city\nann,oslo\n", {}, "series.csv, line 1: no column holds numbers"),
        ("x,y\n1,2\n", {"columns": ["z"]}, "series.csv, line 1: no column 'z'; the header has 'x', 'y'"),
        ("t,x\n2024-01-01,1\n", {"columns": ["t"]}, "series.csv, line 2, column 't': '2024-01-01' is not a number"),
        ("t,x\n2024-01-01,1\n01/02/2024,2\n", {}, "series.csv, line 3, column 't': '01/02/2024' is not an ISO 8601"),
        ("x,x\n1,2\n", {}, "series.csv, line 1: two columns are named 'x' (columns 1 and 2)"),
        ("x\n1\n2,3\n", {}, "series.csv, line 3: 2 cells but the header has 1 columns"),
        (
            "id,v\na,1\nb,\n", {"id_column": "id", "value_column": "v"},
            "series.csv, line 3, column 'v': empty cell; every row needs a value",
        ),
        (
            "id,t,v\na,2024-01-01,1\na,2024-01-02,2\na,2024-01-01,3\n",
            {"id_column": "id", "value_column": "v", "time_column": "t"},
            "series.csv, line 4, column 't': series 'a' has a second row for 2024-01-01T00:00:00 (first on line 2)",
        ),
        ("id,v\na,1\n", {"id_column": "id", "value_column": "value"}, "series.csv, line 1: no column 'value'"),
    ],
)
def test_csv_errors_name_the_file_line_and_column(tmp_path: Path, text: str, options: dict, message: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(SeriesCsvError) as error:
        read_series_csv(path, **options)
    assert str(error.value).startswith(str(tmp_path / message))


def test_a_named_time_column_is_not_a_series_and_other_encodings_are_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path, "day,x\n20240101,1\n20240102,2\n")  # basic ISO 8601 dates look like numbers
    assert read_series_csv(path, time_column="day") == [
        NamedSeries("x", [1.0, 2.0], [datetime(2024, 1, 1), datetime(2024, 1, 2)])
    ]
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("café\n1\n".encode("latin-1"))
    with pytest.raises(SeriesCsvError, match=r"latin1.csv: not UTF-8 text \(.*\); save it as UTF-8"):
        read_series_csv(latin1)


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        (["2024-01-01", "2024-01-02"], ["2024-01-03", "2024-01-04"]),
        (["2024-01-01 00:00", "2024-01-01 00:30"], ["2024-01-01 01:00", "2024-01-01 01:30"]),
        (["2023-10-01", "2024-01-01"], ["2024-04-01", "2024-07-01"]),  # quarters, not 92 days
        (["2024-01-31", "2024-02-29"], ["2024-03-31", "2024-04-30"]),  # month ends stay month ends
        (["2024-01-15", "2024-02-15"], ["2024-03-15", "2024-04-15"]),
    ],
)
def test_future_times_continue_the_last_step(times: list[str], expected: list[str]) -> None:
    series = NamedSeries("x", [1.0, 2.0], [datetime.fromisoformat(t) for t in times])
    assert series.future_times(2) == [datetime.fromisoformat(t) for t in expected]
    assert NamedSeries("x", [1.0, 2.0]).future_times(2) is None


# --- output formats ---

SERIES = [
    NamedSeries("north", [10.0, 12.0, 11.0], [datetime(2024, 1, 1), datetime(2024, 2, 1), datetime(2024, 3, 1)]),
    NamedSeries("load", [0.5, 0.25]),
]
RESULT = ForecastResult(
    model="tiny-tsmix",
    model_version="3",
    point="median",
    forecasts=[
        SeriesForecast(point=[12.0, 1234.5], quantiles={0.1: [9.0, 1000.0], 0.9: [15.25, 1500.0]}, context_used=3),
        SeriesForecast(point=[0.012345, 0.02], quantiles={}, context_used=2),
    ],
)


def test_tables_show_steps_time_stamps_and_quantiles() -> None:
    assert format_forecasts(SERIES, RESULT) == (
        "model tiny-tsmix (version 3); POINT is the median\n"
        "\n"
        "north (3 values used)\n"
        "STEP  TIME         POINT    Q0.1    Q0.9\n"
        "   1  2024-04-01    12.0     9.0    15.2\n"  # five significant digits of the series' largest value
        "   2  2024-05-01  1234.5  1000.0  1500.0\n"
        "\n"
        "load (2 values used)\n"
        "STEP     POINT\n"
        "   1  0.012345\n"
        "   2  0.020000\n"
    )


def test_json_has_one_object_per_series() -> None:
    document = json.loads(json.dumps(forecasts_json(SERIES, RESULT)))
    assert document == {
        "model": "tiny-tsmix",
        "model_version": "3",
        "point": "median",
        "series": [
            {
                "name": "north",
                "context_used": 3,
                "times": ["2024-04-01", "2024-05-01"],
                "point": [12.0, 1234.5],
                "quantiles": {"0.1": [9.0, 1000.0], "0.9": [15.25, 1500.0]},
            },
            {"name": "load", "context_used": 2, "times": None, "point": [0.012345, 0.02], "quantiles": {}},
        ],
    }


# --- plots ---


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def _daily(name: str, n: int) -> NamedSeries:
    times = [datetime(2024, 1, 1) + (datetime(2024, 1, 2) - datetime(2024, 1, 1)) * k for k in range(n)]
    return NamedSeries(name, [float(np.sin(k / 5)) for k in range(n)], times)


def _fan(horizon: int, levels: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> SeriesForecast:
    point = [0.1 * k for k in range(horizon)]
    return SeriesForecast(point, {q: [p + (q - 0.5) * 2 for p in point] for q in levels}, context_used=30)


def test_plot_writes_a_png_with_one_panel_per_series(tmp_path: Path) -> None:
    series = [_daily("with times", 100), NamedSeries("without times", [float(k % 7) for k in range(40)])]
    result = ForecastResult("tiny-tsmix", "3", "median", [_fan(12), _fan(12, levels=())])
    path = plot_forecasts(series, result, tmp_path / "forecast.png")
    assert path == tmp_path / "forecast.png"
    assert _png_size(path) == (640, 600)  # one column, two rows of 2.6 in + 0.8 in title, at 100 dpi
    assert path.stat().st_size > 20_000


def test_plot_leaves_out_series_beyond_the_panel_limit(tmp_path: Path) -> None:
    series = [_daily(f"s{k}", 60) for k in range(MAX_PANELS + 2)]
    result = ForecastResult("m", "1", "mean", [_fan(6, levels=(0.2, 0.8)) for _ in series])
    width, height = _png_size(plot_forecasts(series, result, tmp_path / "many.png"))
    assert (width, height) == (3 * 640, 4 * 260 + 80)  # 12 panels: 3 columns, 4 rows
    with pytest.raises(ValueError, match="2 series but 14 forecasts"):
        plot_forecasts(series[:2], result, tmp_path / "mismatch.png")


def test_plot_without_matplotlib_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an uninstalled package looks like to find_spec
    with pytest.raises(MatplotlibMissingError, match=r"pip install 'seqcast\[plot\]'"):
        plot_forecasts(SERIES, RESULT, tmp_path / "x.png")


# --- the command line ---


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Replaces SeqcastClient.forecast with one that records its arguments and answers from `RESULT`."""
    calls: list[tuple] = []

    def forecast(self, series, horizon, model="", timeout=None):
        calls.append((series, horizon, model, timeout))
        return ForecastResult(RESULT.model, RESULT.model_version, RESULT.point, RESULT.forecasts[: len(series)])

    monkeypatch.setattr(SeqcastClient, "forecast", forecast)
    return calls


WIDE = "month,north,load\n2024-01-01,10,\n2024-02-01,12,0.5\n2024-03-01,11,0.25\n"


def test_forecast_command_prints_tables(
    tmp_path: Path, scripted: list[tuple], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _csv(tmp_path, WIDE)
    assert main(["--timeout", "9", "forecast", "--csv", str(path), "--horizon", "2", "--model", "tiny-tsmix"]) == 0
    assert scripted == [([[10.0, 12.0, 11.0], [0.5, 0.25]], 2, "tiny-tsmix", 9.0)]
    out = capsys.readouterr().out
    assert out.startswith("model tiny-tsmix (version 3); POINT is the median\n\nnorth (3 values used)\n")
    assert "   1  2024-04-01    12.0     9.0    15.2\n" in out
    # The late-starting "load" column carries time stamps too.
    assert "load (2 values used)\nSTEP  TIME           POINT\n   1  2024-04-01  0.012345\n" in out


def test_forecast_command_json_and_plot(
    tmp_path: Path, scripted: list[tuple], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _csv(tmp_path, WIDE)
    plot = tmp_path / "out.png"
    args = ["forecast", "--csv", str(path), "--horizon", "2", "--column", "load", "--json", "--plot", str(plot)]
    assert main([*args, "--timeout", "3"]) == 0
    assert scripted[-1] == ([[0.5, 0.25]], 2, "", 3.0)
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert [s["name"] for s in document["series"]] == ["load"]
    assert document["series"][0]["times"] == ["2024-04-01", "2024-05-01"]
    assert captured.err == f"wrote the plot to {plot}\n"
    assert plot.read_bytes()[:8] == PNG_SIGNATURE


def test_forecast_command_reads_the_long_layout(
    tmp_path: Path, scripted: list[tuple], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _csv(tmp_path, "id,v\nb,3\na,1\nb,4\n")
    assert main(["forecast", "--csv", str(path), "--horizon", "1", "--id-column", "id", "--value-column", "v"]) == 0
    assert scripted[-1][0] == [[3.0, 4.0], [1.0]]


@pytest.mark.parametrize(
    ("csv_text", "extra", "message"),
    [
        ("x\n1\nabc\n", [], "line 3, column 'x': 'abc' is not a number"),
        ("x\n1\n", ["--column", "y"], "line 1: no column 'y'; the header has 'x'"),
        ("x\n1\n", ["--id-column", "x"], "error: the long layout needs both --id-column and --value-column"),
        ("x\n1\n", ["--plot", "/no/such/dir/p.png"], "error: --plot: directory /no/such/dir does not exist"),
    ],
)
def test_forecast_command_usage_errors_exit_2_with_one_line(
    tmp_path: Path, scripted: list[tuple], capsys: pytest.CaptureFixture[str],
    csv_text: str, extra: list[str], message: str,
) -> None:
    path = _csv(tmp_path, csv_text)
    assert main(["forecast", "--csv", str(path), "--horizon", "2", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert message in captured.err
    assert scripted == []  # the server is never called


def test_forecast_command_missing_file_and_missing_matplotlib(
    tmp_path: Path, scripted: list[tuple], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["forecast", "--csv", str(tmp_path / "none.csv"), "--horizon", "2"]) == 2
    assert capsys.readouterr().err == f"error: cannot read {tmp_path / 'none.csv'}: No such file or directory\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = _csv(tmp_path, WIDE)
    assert main(["forecast", "--csv", str(path), "--horizon", "2", "--plot", str(tmp_path / "p.png")]) == 2
    assert capsys.readouterr().err == "error: --plot: plotting needs matplotlib: pip install 'seqcast[plot]'\n"


def test_forecast_command_server_errors_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def forecast(self, series, horizon, model="", timeout=None):
        raise SeqcastError(grpc.StatusCode.NOT_FOUND, "model 'nope' is not loaded")

    monkeypatch.setattr(SeqcastClient, "forecast", forecast)
    path = _csv(tmp_path, WIDE)
    assert main(["forecast", "--csv", str(path), "--horizon", "2", "--model", "nope"]) == 1
    assert capsys.readouterr().err == "error: NOT_FOUND: model 'nope' is not loaded\n"


def test_models_lists_forecast_details(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    info = ForecastInfo(64, 8, 24, [0.1, 0.5, 0.9], "median", "QS", 4)
    models = [
        ModelInfo("en-de", "1", "translation", "transformer", "CPUExecutionProvider", 128, 64, is_default=True),
        ModelInfo("tsmix", "2", "forecast", "mlp", "CPUExecutionProvider", 0, 0, is_default=True, forecast=info),
    ]
    monkeypatch.setattr(SeqcastClient, "list_models", lambda self, timeout=None: models)
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["tsmix", "*", "2", "forecast", "mlp", "CPUExecutionProvider", "-", "-"]
    assert lines[3] == ""
    assert lines[4].split() == [
        "FORECAST", "MODEL", "CONTEXT", "MIN", "CONTEXT", "MAX", "HORIZON", "POINT", "LEVELS", "FREQUENCY", "SEASON"
    ]
    assert lines[5].split() == ["tsmix", "64", "8", "24", "median", "0.1,0.5,0.9", "QS", "4"]
    assert lines[6] == "* default model of its task (translation, forecast)"
