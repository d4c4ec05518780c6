"""The direct MLP ensemble and the Theta blend: the Theta method on series whose forecast is
known, and both forecasters decoded step by step against their whole-sequence forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqcast.bundle.decoding import forecast_values
from seqcast.client import SeqcastClient
from seqcast.export.config import ForecastConfig
from seqcast.export.forecast.data import TASKS
from seqcast.export.forecast.forecasters import MlpForecaster, ThetaBlend, build_forecaster, last_values, theta_forecast
from seqcast.export.graphs import TorchRuntime, graphs_for

ALPHAS = torch.linspace(0.05, 1.0, 20)
PATTERN = torch.tensor([0.8, 1.2, 1.5, 0.5])


def test_theta_repeats_a_flat_seasonal_series() -> None:
    values = (3.0 * PATTERN).repeat(8).unsqueeze(0)  # (1, 32)
    forecast = theta_forecast(values, torch.ones_like(values), 8, 4, ALPHAS)
    assert torch.allclose(forecast, (3.0 * PATTERN).repeat(2).unsqueeze(0), atol=1e-5)


def test_theta_adds_half_the_drift_of_a_trending_series() -> None:
    # A line: smoothing follows it best with alpha = 1, so the forecast is the last value plus
    # half the slope per step (the Theta method's halved extrapolation).
    values = (1.0 + 0.1 * torch.arange(32.0)).unsqueeze(0)
    forecast = theta_forecast(values, torch.ones_like(values), 4, 4, ALPHAS)
    assert torch.allclose(forecast[0], values[0, -1] + 0.05 * torch.arange(1, 5), atol=1e-4)


def test_theta_reads_only_the_values_present() -> None:
    short = (2.0 * PATTERN).repeat(3)
    padded, present = last_values(torch.cat([short, torch.zeros(5)]).unsqueeze(0), torch.tensor([[1] * 12 + [0] * 5]), 16)
    assert present.sum() == 12 and torch.equal(padded[0, 4:], short)
    forecast = theta_forecast(padded, present, 4, 4, ALPHAS)
    assert torch.allclose(forecast[0], 2.0 * PATTERN, atol=1e-5)


def _decoded_and_forward(model: torch.nn.Module, contexts: list[np.ndarray], horizon: int, column: int) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    decoded = forecast_values(TorchRuntime(graphs_for(model)), contexts, horizon, column)
    forward = []
    for context, steps in zip(contexts, decoded):
        source = torch.from_numpy(context[None, :])
        fed = torch.tensor([[context[-1], *steps[:-1, column]]])
        forward.append(model(source, torch.ones_like(source, dtype=torch.long), fed)[0].detach().numpy())
    return decoded, np.stack(forward)


@pytest.mark.parametrize("cfg", [
    ForecastConfig(architecture="mlp", d_model=8, layers=1, members=3, lookbacks=(8, 12)),
    ForecastConfig(architecture="lstm-dot", d_model=8, theta_weight=0.5, theta_lookbacks=(8, 16)),
], ids=["mlp", "lstm-theta"])
def test_step_by_step_decoding_equals_the_forward_pass_with_ordered_quantiles(cfg: ForecastConfig) -> None:
    torch.manual_seed(0)
    model = build_forecaster(cfg)
    assert isinstance(model, (MlpForecaster, ThetaBlend))
    rng = np.random.default_rng(0)
    contexts = [(1 + rng.random(n)).astype(np.float32) for n in (32, 8, 13)]  # shorter than the lookbacks too
    decoded, forward = _decoded_and_forward(model, contexts, 8, 4)
    assert decoded.shape == (3, 8, 9)
    assert np.abs(decoded - forward).max() < 1e-5
    assert (np.diff(decoded, axis=-1) >= 0).all()


def test_mlp_members_train_on_their_own_loss_and_average_at_inference() -> None:
    model = build_forecaster(ForecastConfig(architecture="mlp", d_model=8, layers=1, members=3))
    context, mask, fed = torch.rand(2, 32), torch.ones(2, 32, dtype=torch.long), torch.zeros(2, 8)
    members = model.train()(context, mask, fed)
    assert members.shape == (3, 2, 8, 9)
    assert torch.allclose(model.eval()(context, mask, fed), model.member_quantiles(context, mask).mean(dim=0))


@pytest.mark.parametrize("name", ["tiny-forecast-mlp", "tiny-forecast-lstm-theta"])
def test_the_server_forecasts_with_the_ensembles_from_short_and_long_histories(server, name: str) -> None:
    tourism = TASKS["tourism"].load()
    series = [tourism.series[0].values[:n].astype(float).tolist() for n in (80, 8, 30)]
    with SeqcastClient(server.target) as client:
        result = client.forecast(series, horizon=5, model=name)
    assert result.model == name and len(result.forecasts) == 3
    for forecast in result.forecasts:
        bands = np.array([forecast.quantiles[q] for q in sorted(forecast.quantiles)])  # (Q, H)
        assert bands.shape == (9, 5) and np.isfinite(bands).all()
        assert (np.diff(bands, axis=0) >= 0).all()
        assert forecast.point == pytest.approx(forecast.quantiles[0.5])
