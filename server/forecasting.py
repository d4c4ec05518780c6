"""Forecast requests, the task layer: validate, scale, decode on the model's scheduler, unscale.

Builds on `seqcast.server.scheduler` (admission and the request handle) and
`seqcast.bundle.scaling`.

Each series is cut to the model's context length (its last values), scaled with the bundle's
scaler fitted on that context, forecast through the same decoding loop as translation (the
point forecast is fed back at each step), and every output column is unscaled with the same
fit. Invalid input is refused with INVALID_ARGUMENT naming the series (and value) index; it is
never cleaned up silently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

from seqcast.bundle.scaling import MeanAbsScaler, Scale, scaled_context
from seqcast.bundle.strategies import ForecastSequence
from seqcast.bundle.strategies import Sequence as DecodingSequence
from seqcast.server.errors import DeadlineExceeded, InvalidArgument
from seqcast.server.models import LoadedModel
from seqcast.server.scheduler import RequestHandle, Work
from seqcast.server.settings import ServerSettings

# Values beyond this magnitude are refused: models compute in float32 (largest ~3.4e38), and a
# value this large is a unit or parsing error far more often than a measurement.
MAX_ABS_VALUE = 1e30


@dataclass(frozen=True)
class ForecastJob:
    model: LoadedModel
    contexts: list[np.ndarray]  # scaled float32, the last context_length values of each series
    scales: list[Scale]
    horizon: int
    # Absolute time.monotonic() after which decoding stops; None = no deadline.
    deadline: float | None


@dataclass(frozen=True)
class SeriesForecast:
    """One series' forecast in data units: columns (horizon, K) in the bundle's column order."""

    columns: np.ndarray
    context_used: int


def _check_values(index: int, values: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        j = int(bad[0])
        raise InvalidArgument(f"series[{index}].values[{j}] is {values[j]}: every value must be a finite number", f"series[{index}].values[{j}]")
    huge = np.flatnonzero(np.abs(values) > MAX_ABS_VALUE)
    if huge.size:
        j = int(huge[0])
        raise InvalidArgument(
            f"series[{index}].values[{j}] is {values[j]:g}: values must lie within ±{MAX_ABS_VALUE:g}; check the units",
            f"series[{index}].values[{j}]",
        )


async def prepare(
    model: LoadedModel,
    series: Sequence[Sequence[float]],
    horizon: int,
    settings: ServerSettings,
    time_remaining: float | None,
) -> ForecastJob:
    """Checks a request against the settings and the model's limits; raises InvalidArgument.

    Reading and checking the values runs on a worker thread: millions of values (a 56 MB request)
    take a few hundred milliseconds, and the event loop goes on serving other calls and health
    probes meanwhile.
    """
    deadline = None if time_remaining is None else time.monotonic() + time_remaining
    return await asyncio.to_thread(_prepare, model, series, horizon, settings, deadline)


def _prepare(
    model: LoadedModel,
    series: Sequence[Sequence[float]],
    horizon: int,
    settings: ServerSettings,
    deadline: float | None,
) -> ForecastJob:
    spec, name, scaler = model.manifest.forecast, model.name, model.scaler
    assert spec is not None and scaler is not None  # the registry hands out forecast models only
    if not series:
        raise InvalidArgument("series is empty: send at least one series to forecast", "series")
    if len(series) > settings.max_series_per_request:
        raise InvalidArgument(
            f"{len(series)} series in one request; at most {settings.max_series_per_request} are accepted: split the request", "series"
        )
    if not 1 <= horizon <= spec.max_horizon:
        raise InvalidArgument(f"horizon must be between 1 and {spec.max_horizon} for model {name}, got {horizon}", "horizon")
    contexts, scales = [], []
    for i, raw in enumerate(series):
        values = np.asarray(raw, dtype=np.float64)
        if len(values) < spec.min_context:
            raise InvalidArgument(
                f"series[{i}] has {len(values)} values; model {name} needs at least {spec.min_context} "
                f"(it uses the last {spec.context_length})", f"series[{i}].values",
            )
        _check_values(i, values)
        context, scale = scaled_context(values, spec, scaler)
        contexts.append(context)
        scales.append(scale)
    return ForecastJob(model, contexts, scales, horizon, deadline)


async def forecast(job: ForecastJob) -> list[SeriesForecast]:
    """Forecasts every series of the job and unscales each step's columns."""
    spec, scaler, scheduler = job.model.manifest.forecast, job.model.scaler, job.model.scheduler
    assert spec is not None and scaler is not None and scheduler is not None
    point = spec.columns.index(spec.point)
    steps: list[list[np.ndarray]] = [[] for _ in job.contexts]

    async def run(start: int, handle: RequestHandle) -> None:
        async with aclosing(handle.events()) as stream:
            async for events in stream:
                for index, columns, _ in events:
                    if columns is not None:
                        steps[start + index].append(columns)

    # A call may hold more series than one batch decodes: its chunks join as rows free up.
    chunk = scheduler.limits.max_batch_rows
    runs: list[asyncio.Task[None]] = []
    handles: list[RequestHandle] = []
    try:
        for start in range(0, len(job.contexts), chunk):
            contexts = job.contexts[start : start + chunk]
            sequences: list[DecodingSequence] = [ForecastSequence(job.horizon, point) for _ in contexts]
            first = np.array([c[-1] for c in contexts], dtype=np.float32)
            handle = scheduler.submit(Work(sequences, contexts, 0.0, first), job.deadline, stream=False)
            handles.append(handle)
            runs.append(asyncio.create_task(run(start, handle)))
        await asyncio.gather(*runs)
    except DeadlineExceeded as e:
        raise DeadlineExceeded(f"{e}; raise the deadline, lower the horizon or send fewer series per request") from None
    finally:
        # One chunk failed, or the call ended early: the others stop at the next step.
        for handle, task in zip(handles, runs):
            handle.cancel()
            task.cancel()
    # Unscaling thousands of series is done on a worker thread, off the event loop.
    return await asyncio.to_thread(_unscaled, steps, job, scaler)


def _unscaled(steps: list[list[np.ndarray]], job: ForecastJob, scaler: MeanAbsScaler) -> list[SeriesForecast]:
    return [
        SeriesForecast(scaler.inverse(np.stack(s).astype(np.float64), scale), len(context))
        for s, scale, context in zip(steps, job.scales, job.contexts)
    ]
