"""The gRPC edge: protobuf messages to domain types and back, and the one table from domain
errors to status codes.

Builds on the task layer (`seqcast.server.translation`, `seqcast.server.forecasting`), which
validates, decodes on the model's scheduler and raises `ServingError` subclasses for what the
caller did wrong or what the server cannot take now. Every handler, unary or streaming, is
wrapped by `_edge`: it maps those errors through `_STATUS`, answers anything else INTERNAL with
the traceback logged, and records the request's duration and code. The handlers themselves
only translate messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import grpc

from seqcast.bundle.manifest import ForecastSpec
from seqcast.bundle.strategies import BeamSearch, Finish, Greedy, Sampling, Strategy
from seqcast.server import errors, forecasting, metrics, translation
from seqcast.server.models import LoadedModel, ModelRegistry, Task
from seqcast.server.settings import ServerSettings
from seqcast.v1 import seqcast_pb2 as pb
from seqcast.v1 import seqcast_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_FINISH = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    Finish.EOS: pb.FINISH_REASON_EOS,
    Finish.LENGTH: pb.FINISH_REASON_LENGTH,
}

# Domain errors to status codes, most specific first; anything else is a bug (INTERNAL, logged).
_STATUS: tuple[tuple[type[errors.ServingError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unsupported, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.EngineFailure, grpc.StatusCode.INTERNAL),
)


def status_of(error: BaseException) -> grpc.StatusCode:
    """The status code a request that raised `error` is answered with (CANCELLED: the caller went
    away, and gRPC cancelled the handler or closed its stream)."""
    for kind, code in _STATUS:
        if isinstance(error, kind):
            return code
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def _model_label(registry: ModelRegistry, name: str, task: Task) -> str:
    """The model a request is counted under: its name if loaded (the task's default if empty),
    else "unknown" (so made-up names cannot grow the metric's label set)."""
    name = name or registry.defaults[task]
    return name if name in registry.models else "unknown"


class _Servicer:
    registry: ModelRegistry
    task: Task


async def abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    """Ends a call that raised `error` with its status code and message (INTERNAL with the
    traceback logged for a bug); does nothing when the caller is gone. Every gRPC front end
    ends its failed calls here."""
    code = status_of(error)
    if code is grpc.StatusCode.CANCELLED:
        return  # the caller is gone; nobody reads a status
    if isinstance(error, errors.ServingError):
        await context.abort(code, str(error))
    log.error("%s failed", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; the server log has the details")


def _edge(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a unary or server-streaming handler: errors to status codes, duration and code to metrics."""
    name = method.__name__

    @contextlib.asynccontextmanager
    async def edge(self: _Servicer, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            yield
        except BaseException as e:
            code = status_of(e)
            await abort(context, e, name)
            raise
        finally:
            metrics.observe_request(_model_label(self.registry, request.model, self.task), name, code,
                                    time.perf_counter() - started)

    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def stream(self: _Servicer, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # aclosing: a stream ended early (the caller went away) closes the handler's
            # generators at once, which cancels the request.
            async with edge(self, request, context), aclosing(method(self, request, context)) as messages:
                async for message in messages:
                    yield message

        return stream

    @functools.wraps(method)
    async def unary(self: _Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with edge(self, request, context):
            return await method(self, request, context)

    return unary


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
        min_new = request.min_new_tokens if request.HasField("min_new_tokens") else None
        return translation.prepare(
            model, list(request.texts), max_new, self.settings, context.time_remaining(), _strategy(request.decoding), min_new,
            request.alignments,
        )

    @_edge
    async def Translate(self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext) -> pb.TranslateResponse:
        job = self._job(request, context)
        results = await translation.translate(job)
        return pb.TranslateResponse(
            model=job.model.name,
            model_version=job.model.manifest.version,
            results=[
                pb.TranslationResult(text=r.text, finish_reason=_FINISH[r.finish], input_tokens=r.input_tokens,
                                     output_tokens=r.output_tokens, alignments=_alignments(r.alignments))
                for r in results
            ],
        )

    @_edge
    async def TranslateStream(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranslateChunk]:
        job = self._job(request, context)
        async for pieces in translation.translate_stream(job):
            for piece in pieces:
                yield pb.TranslateChunk(
                    index=piece.index,
                    text=piece.text,
                    finish_reason=_FINISH[piece.finish],
                    input_tokens=len(job.sources[piece.index]),
                    output_tokens=piece.output_tokens,
                    alignments=_alignments(piece.alignments),
                )


def _alignments(alignments: translation.Alignments | None) -> pb.Alignments | None:
    if alignments is None:
        return None
    return pb.Alignments(
        source_tokens=alignments.source_tokens,
        rows=[pb.AlignmentRow(target_token=token, weights=weights)
              for token, weights in zip(alignments.target_tokens, alignments.weights.tolist())],
    )


class ForecastingServicer(_Servicer, pb_grpc.ForecastingServicer):
    task: Task = "forecast"

    def __init__(self, registry: ModelRegistry, settings: ServerSettings) -> None:
        self.registry = registry
        self.settings = settings

    @_edge
    async def Forecast(self, request: pb.ForecastRequest, context: grpc.aio.ServicerContext) -> pb.ForecastResponse:
        model = self.registry.get(request.model, "forecast")
        series = [s.values for s in request.series]
        job = await forecasting.prepare(model, series, request.horizon, self.settings, context.time_remaining())
        results = await forecasting.forecast(job)
        # Thousands of series make a reply of millions of values: built on a worker thread, so
        # the event loop goes on serving meanwhile.
        return await asyncio.to_thread(_forecast_response, model, results)


def _forecast_response(model: LoadedModel, results: list[forecasting.SeriesForecast]) -> pb.ForecastResponse:
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
                        **({"alignment_layer": str(m.alignment_layer)} if m.alignment_layer is not None else {}),
                        **{k: str(v) for k, v in m.dims.items()},
                        "precision": m.precision.precision,
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
