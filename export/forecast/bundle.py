"""Turning a forecasting run into a bundle: graphs, parity on real held-out windows, manifest.

Parity is checked three ways before anything is written where the server looks:
  * graph parity: encoder and one decoder step, PyTorch against ONNX Runtime, on random inputs
    over several batch sizes, context lengths and (transformer) past lengths;
  * forecast parity: whole forecasts of real validation windows through the server's decoding
    loop, PyTorch against ONNX Runtime, in scaled units and in the data's units;
  * cached against uncached: the same forecasts recomputed from the whole decoder prefix at
    every step (no cache, no carried state) against the cached loop.
Scaled units are the bar (`tolerance`): a float32 model is exact to about 1e-7 relative, so an
absolute bar in data units would pass small series and fail large ones (vic_elec's demand is
~5,000) for the same model. The data-unit figure is recorded beside it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqcast.bundle.decoding import forecast_values
from seqcast.bundle.manifest import ForecastSpec, Manifest
from seqcast.bundle.runtime import OnnxModel, RuntimeOptions
from seqcast.export.config import ForecastConfig
from seqcast.export.forecast.data import Window, forecast_task, scaled_contexts, windows
from seqcast.export.forecast.forecasters import ArForecaster, MlpForecaster, TransformerForecaster
from seqcast.export.forecast.train import context_length, load_forecaster, min_context, point_column
from seqcast.export.graphs import GraphPair, TorchRuntime, graphs_for
from seqcast.export.onnx_export import export_pair
from seqcast.export.parity import TOLERANCE, ParityError, ParityReport, default_cases, graph_parity
from seqcast.export.writing import checksums, export_info, exported_precision, write_bundle

log = logging.getLogger(__name__)

PARITY_WINDOWS = 24


@torch.inference_mode()
def uncached_forecast(model: nn.Module, context: np.ndarray, horizon: int, column: int) -> np.ndarray:
    """Forecast columns (H, K) of one scaled context, recomputing the whole decoder prefix at
    every step: no KV cache, no carried RNN state."""
    source = torch.from_numpy(context[None, :])
    mask = torch.ones_like(source, dtype=torch.long)
    inputs = [float(context[-1])]
    steps = []
    for _ in range(horizon):
        out = model(source, mask, torch.tensor([inputs], dtype=torch.float32))[0, -1]
        steps.append(out.numpy())
        inputs.append(float(out[column]))
    return np.stack(steps)


def check_forecast_parity(
    model: nn.Module, cfg: ForecastConfig, graphs: GraphPair, bundle_dir: Path, items: list[Window], tolerance: float
) -> ParityReport:
    """Runs the three checks on the graphs in bundle_dir; raises ParityError listing every failure."""
    model.eval()
    report = ParityReport(tolerance=tolerance)
    torch_rt = TorchRuntime(graphs)
    onnx_rt = OnnxModel(bundle_dir, graphs.encoder_spec, graphs.decoder_spec, RuntimeOptions(device="cpu"))
    graph_parity(torch_rt, onnx_rt, 5, default_cases(isinstance(model, TransformerForecaster)), report)

    task, column = forecast_task(cfg), point_column(model)
    horizon, scaler = task.horizon, task.scaler
    contexts, scales = scaled_contexts([w.history for w in items], context_length(cfg), scaler)
    cached = forecast_values(torch_rt, contexts, horizon, column)
    served = forecast_values(onnx_rt, contexts, horizon, column)
    uncached = np.stack([uncached_forecast(model, c, horizon, column) for c in contexts])
    report.sentences = len(items)
    report.max_abs_diff_forecast_scaled = float(np.abs(cached - served).max())
    report.max_abs_diff_forecast_data = max(
        float(np.abs(scaler.inverse(a.astype(np.float64), s) - scaler.inverse(b.astype(np.float64), s)).max())
        for a, b, s in zip(cached, served, scales)
    )
    report.max_abs_diff_cached_uncached = float(np.abs(cached - uncached).max())
    report.onnx_matches_pytorch = report.max_abs_diff_forecast_scaled <= tolerance
    report.cached_matches_uncached = report.max_abs_diff_cached_uncached <= tolerance
    if not report.onnx_matches_pytorch:
        report.problems.append(f"forecasts: ONNX Runtime differs from PyTorch by {report.max_abs_diff_forecast_scaled:.2e} (scaled)")
    if not report.cached_matches_uncached:
        report.problems.append(f"forecasts: cached differs from uncached by {report.max_abs_diff_cached_uncached:.2e} (scaled)")
    if not report.ok:
        raise ParityError("export parity failed:\n  " + "\n  ".join(report.problems))
    return report


def _dims(model: nn.Module, cfg: ForecastConfig) -> dict[str, int]:
    if isinstance(model, ArForecaster):
        return {"order": model.order}
    dims = {"d_model": cfg.d_model, "quantiles": len(cfg.quantile_levels)}
    if isinstance(model, TransformerForecaster):
        return {**dims, "layers": cfg.layers, "n_heads": cfg.n_heads, "head_dim": model.head_dim, "d_ff": cfg.d_ff}
    if isinstance(model, MlpForecaster):
        return {**dims, "layers": cfg.layers, "members": cfg.members, "max_lookback": max(m.lookback for m in model.members)}
    return {**dims, "layers": 1}  # one LSTM layer each side


def forecast_spec(model: nn.Module, cfg: ForecastConfig, frequency: str, season_length: int) -> ForecastSpec:
    point_only, task = isinstance(model, ArForecaster), forecast_task(cfg)
    return ForecastSpec(
        columns=["mean"] if point_only else [str(q) for q in cfg.quantile_levels],
        point="mean" if point_only else "0.5",
        context_length=context_length(cfg),
        min_context=min_context(cfg),
        max_horizon=task.horizon,
        scaling=task.scaler.to_manifest(),
        frequency=frequency,
        season_length=season_length,
    )


def export_forecast_bundle(
    run_dir: Path, models_dir: Path, name: str, version: str, tolerance: float = TOLERANCE, overwrite: bool = False
) -> Path:
    """Exports the best checkpoint of a forecasting run to models_dir/name/version."""
    model, cfg = load_forecaster(run_dir)
    graphs = graphs_for(model)
    task = forecast_task(cfg)
    data = task.load()
    items = windows(task, data, "validation")[:PARITY_WINDOWS]

    def build(work: Path) -> Manifest:
        # Forecasters are small: float32 storage keeps the graphs exactly the trained model.
        export_pair(graphs, work, 5, weights_fp16=False)
        report = check_forecast_parity(model, cfg, graphs, work, items, tolerance)
        log.info(
            "parity ok: encoder %.2e, decoder %.2e over %d cases; forecasts of %d windows %.2e scaled "
            "(%.2e in data units); cached vs uncached %.2e",
            report.max_abs_diff_encoder, report.max_abs_diff_decoder, report.cases, report.sentences,
            report.max_abs_diff_forecast_scaled, report.max_abs_diff_forecast_data, report.max_abs_diff_cached_uncached,
        )
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        return Manifest(
            name=name,
            version=version,
            task="forecast",
            architecture=cfg.architecture,
            dims=_dims(model, cfg),
            forecast=forecast_spec(model, cfg, data.frequency, data.season_length),
            encoder=graphs.encoder_spec,
            decoder=graphs.decoder_spec,
            files=checksums(work),
            export=export_info("float32"),
            parity=report.to_manifest(),
            precision=exported_precision(work, "float32"),
            training={
                "data": cfg.data,
                "config": json.loads((run_dir / "config.json").read_text()),
                "steps": metrics.get("steps"),
                "seconds": metrics.get("seconds"),
                "best_validation_mase": metrics.get("best_validation_mase"),
            },
        )

    return write_bundle(models_dir / name / version, overwrite, build)
