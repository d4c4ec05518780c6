"""gRPC servicers: protobuf messages in and out, domain errors mapped to status codes here only.

Handlers call `seqcast.server.translation` and `seqcast.server.forecasting`, which raise `ServingError` subclasses for what the
caller did wrong or what the server cannot take now; anything else is a bug, answered INTERNAL
with the traceback logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from seqcast.server import forecasting, metrics, translation
from seqcast.server.strategies import BeamSearch, Finish, Greedy, Sampling, Strategy
from seqcast.server.errors import ServingError
from seqcast.server.manifest import ForecastSpec
from seqcast.server.models import ModelRegistry, Task
from seqcast.server.settings import ServerSettings
from seqcast.v1 import seqcast_pb2 as pb
from seqcast.v1 import seqcast_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_FINISH = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    Finish.EOS: pb.FINISH_REASON_EOS,
    Finish.LENGTH: pb.FINISH_REASON_LENGTH,
}

T = TypeVar("T")


def _code(error: BaseException) -> grpc.StatusCode:
    if isinstance(error, ServingError):
        return error.code
    return grpc.StatusCode.CANCELLED if isinstance(error, asyncio.CancelledError) else grpc.StatusCode.INTERNAL


def _model_label(registry: ModelRegistry, name: str, task: Task) -> str:
    """The model a request is counted under: its name if loaded (the task's default if empty),
    else "unknown" (so made-up names cannot grow the metric's label set)."""
    name = name or registry.defaults[task]
    return name if name in registry.models else "unknown"


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
    if isinstance(error, ServingError):
        await context.abort(error.code, str(error))
    log.exception("%s failed", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; the server log has the details")


def _stop_on_done(context: grpc.aio.ServicerContext) -> threading.Event:
    """An event set when the RPC ends early (client cancelled or went away)."""
    stop = threading.Event()
    context.add_done_callback(lambda _: stop.set())
    return stop


def _unary(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Maps errors to status codes and records the request's duration and code."""

    @functools.wraps(method)
    async def wrapper(self: _Servicer, request: Any, context: grpc.aio.ServicerContext) -> T:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return await method(self, request, context)
        except BaseException as e:
            code = _code(e)
            if isinstance(e, Exception):
                await _abort(context, e, method.__name__)
            raise
        finally:
            label = _model_label(self.registry, request.model, self.task)
            metrics.observe_request(label, method.__name__, code, time.perf_counter() - started)

    return wrapper


class _Servicer:
    registry: ModelRegistry
    task: Task


def _strategy(decoding: pb.Decoding) -> Strategy:
    """The request's decoding strategy; unset fields take their documented defaults."""
    kind = decoding.WhichOneof("strategy")
    if kind == "beam_search":
        beam = decoding.beam_search
        return BeamSearch(beam.beam_size, beam.length_penalty if beam.HasField("length_penalty") else 1.0)
    if kind == "sampling":
        s = decoding.sampling
        return Sampling(
            temperature=s.temperature if s.HasField("temperature") else 1.0,
            top_k=s.top_k,
            top_p=s.top_p if s.HasField("top_p") else 1.0,
            seed=s.seed if s.HasField("seed") else None,
        )
    return Greedy()


class TranslationServicer(_Servicer, pb_grpc.TranslationServicer):
    task: Task = "translation"

    def __init__(self, registry: ModelRegistry, settings: ServerSettings) -> None:
        self.registry = registry
        self.settings = settings

    def _job(self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext) -> translation.TranslateJob:
        model = self.registry.get(request.model, "translation")
        max_new = request.max_new_tokens if request.HasField("max_new_tokens") else None
        return translation.prepare(
            model, list(request.texts), max_new, self.settings, context.time_remaining(), _strategy(request.decoding)
        )

    @_unary
    async def Translate(self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext) -> pb.TranslateResponse:
        job = self._job(request, context)
        outputs = await translation.translate(job, _stop_on_done(context))
        codec = job.model.codec
        return pb.TranslateResponse(
            model=job.model.name,
            model_version=job.model.manifest.version,
            results=[
                pb.TranslationResult(
                    text=codec.decode(out.tokens),
                    finish_reason=_FINISH[out.finish],
                    input_tokens=len(src),
                    output_tokens=len(out.tokens),
                )
                for src, out in zip(job.sources, outputs)
            ],
        )

    async def TranslateStream(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranslateChunk]:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            job = self._job(request, context)
            async for piece in translation.translate_stream(job, _stop_on_done(context)):
                yield pb.TranslateChunk(
                    index=piece.index,
                    text=piece.text,
                    finish_reason=_FINISH[piece.finish],
                    input_tokens=len(job.sources[piece.index]),
                    output_tokens=piece.output_tokens,
                )
        except BaseException as e:
            code = _code(e)
            if isinstance(e, Exception):
                await _abort(context, e, "TranslateStream")
            raise
        finally:
            label = _model_label(self.registry, request.model, self.task)
            metrics.observe_request(label, "TranslateStream", code, time.perf_counter() - started)


class ForecastingServicer(_Servicer, pb_grpc.ForecastingServicer):
    task: Task = "forecast"

    def __init__(self, registry: ModelRegistry, settings: ServerSettings) -> None:
        self.registry = registry
        self.settings = settings

    @_unary
    async def Forecast(self, request: pb.ForecastRequest, context: grpc.aio.ServicerContext) -> pb.ForecastResponse:
        model = self.registry.get(request.model, "forecast")
        series = [s.values for s in request.series]
        job = forecasting.prepare(model, series, request.horizon, self.settings, context.time_remaining())
        results = await forecasting.forecast(job, _stop_on_done(context))
        spec = model.manifest.forecast
        assert spec is not None
        point = spec.columns.index(spec.point)
        levels = [(i, float(c)) for i, c in enumerate(spec.columns) if c != "mean"]
        return pb.ForecastResponse(
            model=model.name,
            model_version=model.manifest.version,
            point="mean" if spec.point == "mean" else "median",
            forecasts=[
                pb.SeriesForecast(
                    point=r.columns[:, point].tolist(),
                    quantiles=[pb.QuantileForecast(level=q, values=r.columns[:, i].tolist()) for i, q in levels],
                    context_used=r.context_used,
                )
                for r in results
            ],
        )


class ModelsServicer(pb_grpc.ModelsServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        models = []
        for model in self.registry.models.values():
            m = model.manifest
            models.append(
                pb.ModelInfo(
                    name=m.name,
                    version=m.version,
                    task=m.task,
                    architecture=m.architecture,
                    execution_provider=model.runtime.provider,
                    max_source_tokens=m.max_source_tokens or 0,
                    max_new_tokens=m.max_new_tokens or 0,
                    metadata={
                        **({"source_language": m.source_language} if m.source_language else {}),
                        **({"target_language": m.target_language} if m.target_language else {}),
                        **{k: str(v) for k, v in m.dims.items()},
                    },
                    forecast=_forecast_info(m.forecast) if m.forecast else None,
                )
            )
        return pb.ListModelsResponse(
            models=models,
            default_translation_model=self.registry.defaults["translation"],
            default_forecast_model=self.registry.defaults["forecast"],
        )


def _forecast_info(spec: ForecastSpec) -> pb.ForecastInfo:
    return pb.ForecastInfo(
        context_length=spec.context_length,
        min_context=spec.min_context,
        max_horizon=spec.max_horizon,
        quantile_levels=spec.quantile_levels,
        point="mean" if spec.point == "mean" else "median",
        frequency=spec.frequency,
        season_length=spec.season_length,
    )
