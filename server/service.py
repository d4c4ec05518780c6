"""gRPC servicers: protobuf messages in and out, domain errors mapped to status codes here only.

Handlers call `seqcast.server.translation` and `seqcast.server.forecasting`, which raise `ServingError` subclasses for what the
caller did wrong or what the server cannot take now; anything else is a bug, answered INTERNAL
with the traceback logged.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from seqcast.server import forecasting, translation
from seqcast.server.decoding import Finish
from seqcast.server.errors import ServingError
from seqcast.server.manifest import ForecastSpec
from seqcast.server.models import ModelRegistry
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


def _unary_errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(self: object, request: object, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except Exception as e:
            await _abort(context, e, method.__name__)
            raise  # unreachable: abort raises

    return wrapper


class TranslationServicer(pb_grpc.TranslationServicer):
    def __init__(self, registry: ModelRegistry, settings: ServerSettings) -> None:
        self.registry = registry
        self.settings = settings

    def _job(self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext) -> translation.TranslateJob:
        model = self.registry.get(request.model, "translation")
        max_new = request.max_new_tokens if request.HasField("max_new_tokens") else None
        return translation.prepare(model, list(request.texts), max_new, self.settings, context.time_remaining())

    @_unary_errors
    async def Translate(self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext) -> pb.TranslateResponse:
        job = self._job(request, context)
        outputs = await translation.translate(job, self.settings, _stop_on_done(context))
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
        try:
            job = self._job(request, context)
            async for piece in translation.translate_stream(job, self.settings, _stop_on_done(context)):
                yield pb.TranslateChunk(
                    index=piece.index,
                    text=piece.text,
                    finish_reason=_FINISH[piece.finish],
                    input_tokens=len(job.sources[piece.index]),
                    output_tokens=piece.output_tokens,
                )
        except Exception as e:
            await _abort(context, e, "TranslateStream")


class ForecastingServicer(pb_grpc.ForecastingServicer):
    def __init__(self, registry: ModelRegistry, settings: ServerSettings) -> None:
        self.registry = registry
        self.settings = settings

    @_unary_errors
    async def Forecast(self, request: pb.ForecastRequest, context: grpc.aio.ServicerContext) -> pb.ForecastResponse:
        model = self.registry.get(request.model, "forecast")
        series = [s.values for s in request.series]
        job = forecasting.prepare(model, series, request.horizon, self.settings, context.time_remaining())
        results = await forecasting.forecast(job, self.settings, _stop_on_done(context))
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
