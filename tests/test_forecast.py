"""Forecasting end to end: exported forecasters against PyTorch, cached against uncached
decoding, and the real server's Forecast RPC on real tourism series."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seqcast.bundle.decoding import forecast_values
from seqcast.bundle.manifest import Manifest
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.client import SeqcastClient, SeqcastError
from seqcast.client.cli import main as client_main
from seqcast.export.forecast.bundle import uncached_forecast
from seqcast.export.forecast.data import TASKS, scaled_contexts, windows
from seqcast.export.forecast.train import context_length, load_forecaster, point_column
from seqcast.export.graphs import TorchRuntime, graphs_for
from seqcast.export.parity import TOLERANCE

from conftest import TINY_FORECASTERS

FORECASTERS = list(TINY_FORECASTERS)
TOURISM = TASKS["tourism"]
SCALER = TOURISM.scaler


@pytest.fixture(scope="module")
def tourism():
    return TOURISM.load()


@pytest.fixture()
def client(server) -> SeqcastClient:
    with SeqcastClient(server.target) as c:
        yield c


@pytest.mark.parametrize("name", FORECASTERS)
def test_manifest_records_forecast_parity_measured_at_export(model_dir: Path, name: str) -> None:
    manifest = Manifest.read(model_dir / name / "1")
    assert manifest.task == "forecast" and manifest.tokenizer is None
    parity = manifest.parity
    assert parity.max_abs_diff_encoder <= TOLERANCE and parity.max_abs_diff_decoder <= TOLERANCE
    assert parity.max_abs_diff_forecast_scaled <= TOLERANCE
    assert parity.max_abs_diff_cached_uncached <= TOLERANCE
    assert parity.sentences == 24 and parity.onnx_matches_pytorch and parity.cached_matches_uncached


@pytest.mark.parametrize("name", FORECASTERS)
def test_onnx_forecasts_match_pytorch_on_held_out_tourism_windows(runs, model_dir, tourism, name) -> None:
    model, cfg = load_forecaster(runs[name])
    bundle = model_dir / name / "1"
    onnx_rt = OnnxModel.from_manifest(bundle, Manifest.read(bundle), RuntimeOptions(device="cpu"))
    items = windows(TOURISM, tourism, "test")
    contexts, scales = scaled_contexts([w.history for w in items], context_length(cfg), SCALER)
    column = point_column(model)
    expected = forecast_values(TorchRuntime(graphs_for(model)), contexts, TOURISM.horizon, column)
    served = forecast_values(onnx_rt, contexts, TOURISM.horizon, column)
    assert expected.shape == (304, 8, 1 if cfg.architecture == "ar" else 9)
    assert np.abs(expected - served).max() <= TOLERANCE
    # After unscaling, the difference is at most the tolerance times each series' scale.
    for a, b, s in zip(expected, served, scales):
        data_diff = np.abs(SCALER.inverse(a.astype(np.float64), s) - SCALER.inverse(b.astype(np.float64), s)).max()
        assert data_diff <= TOLERANCE * s.scale


@pytest.mark.parametrize("name", FORECASTERS)
def test_cached_forecasting_equals_uncached(runs, tourism, name) -> None:
    model, cfg = load_forecaster(runs[name])
    items = windows(TOURISM, tourism, "test")[:16]
    contexts, _ = scaled_contexts([w.history for w in items], context_length(cfg), SCALER)
    column = point_column(model)
    cached = forecast_values(TorchRuntime(graphs_for(model)), contexts, TOURISM.horizon, column)
    uncached = np.stack([uncached_forecast(model, c, TOURISM.horizon, column) for c in contexts])
    assert np.abs(cached - uncached).max() <= 1e-5
    # Non-trivial: forecasts move over the horizon and differ between series.
    assert np.ptp(cached[:, :, column], axis=1).max() > 1e-3


def _tourism_series(tourism, lengths: list[int]) -> list[list[float]]:
    return [tourism.series[i].values[:n].astype(float).tolist() for i, n in enumerate(lengths)]


def test_one_call_forecasts_series_of_different_lengths_with_ordered_quantiles(client, tourism) -> None:
    lengths = [80, 8, 33, 20, 64, 12]
    series = _tourism_series(tourism, lengths)
    result = client.forecast(series, horizon=8)
    assert result.model == "tiny-forecast-transformer" and result.point == "median"
    assert len(result.forecasts) == len(series)
    for f, n in zip(result.forecasts, lengths):
        assert f.context_used == min(n, 32)
        assert len(f.point) == 8
        assert sorted(f.quantiles) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
        bands = np.array([f.quantiles[q] for q in sorted(f.quantiles)])  # (Q, H)
        assert (np.diff(bands, axis=0) >= 0).all(), "quantiles must not cross at any step"
        assert f.point == pytest.approx(f.quantiles[0.5])
        assert np.isfinite(bands).all()


def test_the_server_applies_the_bundle_scaling_and_its_inverse(client, runs, tourism) -> None:
    """Served forecasts equal PyTorch's forecast of the same context, scaled and unscaled offline."""
    model, cfg = load_forecaster(runs["tiny-forecast-lstm-additive"])
    series = _tourism_series(tourism, [80, 15, 40])
    served = client.forecast(series, horizon=8, model="tiny-forecast-lstm-additive")
    contexts, scales = scaled_contexts([np.asarray(s, dtype=np.float32) for s in series], context_length(cfg), SCALER)
    expected = forecast_values(TorchRuntime(graphs_for(model)), contexts, 8, point_column(model))
    for f, e, s in zip(served.forecasts, expected, scales):
        unscaled = SCALER.inverse(e.astype(np.float64), s)
        assert np.abs(np.array(f.point) - unscaled[:, 4]).max() <= 1e-4 * s.scale
        assert np.abs(np.array(f.quantiles[0.1]) - unscaled[:, 0]).max() <= 1e-4 * s.scale


def test_a_series_forecast_alone_equals_the_same_series_inside_a_batch(client, tourism) -> None:
    series = _tourism_series(tourism, [80, 9, 50, 31])
    together = client.forecast(series, horizon=8)
    for i, s in enumerate(series):
        alone = client.forecast([s], horizon=8).forecasts[0]
        assert alone.point == pytest.approx(together.forecasts[i].point, rel=1e-5, abs=1e-4)


def test_the_ar_baseline_serves_point_forecasts_only(client, tourism) -> None:
    result = client.forecast(_tourism_series(tourism, [40, 8]), horizon=5, model="tiny-forecast-ar")
    assert result.point == "mean"
    assert [len(f.point) for f in result.forecasts] == [5, 5]
    assert all(f.quantiles == {} for f in result.forecasts)


@pytest.mark.parametrize(
    ("series", "horizon", "message"),
    [
        ([], 8, "series is empty"),
        ([[1.0] * 12, [1.0] * 7], 8, "series[1] has 7 values; model tiny-forecast-transformer needs at least 8"),
        ([[1.0] * 12, [1.0] * 5 + [float("nan")] + [1.0] * 6], 8, "series[1].values[5] is nan"),
        ([[1.0] * 12 + [float("inf")]], 8, "series[0].values[12] is inf"),
        ([[2.0] * 12, [1.0] * 11 + [-1e300]], 8, "series[1].values[11] is -1e+300: values must lie within"),
        ([[1.0] * 12], 0, "horizon must be between 1 and 8"),
        ([[1.0] * 12], 9, "horizon must be between 1 and 8"),
    ],
)
def test_bad_forecast_input_is_refused_with_its_index_and_the_server_keeps_serving(client, series, horizon, message) -> None:
    with pytest.raises(SeqcastError) as err:
        client.forecast(series, horizon=horizon)
    assert err.value.code.name == "INVALID_ARGUMENT"
    assert message in err.value.message
    assert len(client.forecast([[1.0, 2.0, 3.0, 4.0] * 3], horizon=8).forecasts) == 1


def test_a_translation_model_is_not_a_forecast_model(client) -> None:
    with pytest.raises(SeqcastError) as err:
        client.forecast([[1.0] * 12], horizon=4, model="tiny-transformer")
    assert err.value.code.name == "INVALID_ARGUMENT" and "is a translation model" in err.value.message
    with pytest.raises(SeqcastError) as err:
        client.forecast([[1.0] * 12], horizon=4, model="no-such-model")
    assert err.value.code.name == "NOT_FOUND"


def test_list_models_describes_forecast_models(client) -> None:
    models = {m.name: m for m in client.list_models() if m.task == "forecast"}
    assert set(models) == set(FORECASTERS)
    info = models["tiny-forecast-transformer"].forecast
    assert (info.context_length, info.min_context, info.max_horizon) == (32, 8, 8)
    assert info.point == "median" and info.frequency == "QS" and info.season_length == 4
    assert models["tiny-forecast-ar"].forecast.point == "mean"
    assert models["tiny-forecast-transformer"].is_default


def test_client_cli_forecasts_a_csv_file_as_json_and_plots_it(server, tourism, tmp_path, capsys) -> None:
    csv = tmp_path / "series.csv"
    a, b = tourism.series[0].values, tourism.series[1].values[40:]
    rows = ["quarter,adelaide_business,adelaide_holiday"]
    for t in range(80):
        rows.append(f"{1998 + t // 4}-{1 + 3 * (t % 4):02d}-01,{a[t]},{b[t - 40] if t >= 40 else ''}")
    csv.write_text("\n".join(rows) + "\n")
    plot = tmp_path / "forecast.png"
    code = client_main(["--target", server.target, "forecast", "--csv", str(csv), "--horizon", "8", "--json", "--plot", str(plot)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in out["series"]] == ["adelaide_business", "adelaide_holiday"]
    assert [s["context_used"] for s in out["series"]] == [32, 32]
    assert out["series"][0]["times"][0] == "2018-01-01"  # continues the quarterly time stamps
    assert len(out["series"][1]["point"]) == 8
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_a_call_of_1024_long_series_beyond_grpcs_default_message_size_is_answered(client, tourism) -> None:
    base = [float(v) for v in tourism.series[0].values]
    series = [base * 8 for _ in range(1024)]  # 640 values each: about 5.2 MB, over gRPC's 4 MiB default
    result = client.forecast(series, horizon=8)
    assert len(result.forecasts) == 1024
    assert {f.context_used for f in result.forecasts} == {32}
    assert result.forecasts[0].point == pytest.approx(result.forecasts[-1].point)
