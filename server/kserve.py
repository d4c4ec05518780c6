"""The KServe v2 / Open Inference Protocol front end over gRPC: `inference.GRPCInferenceService`
with Triton's streaming `ModelStreamInfer`, so tritonclient and other v2 clients call seqcast
unchanged, on the same port as the native API.

Builds on the generated stubs in `seqcast.inference` and the task layer
(`seqcast.server.translation`, `seqcast.server.forecasting`), as the native API does: this
module turns tensors and parameters into the task layer's arguments and its results back into
tensors, nothing more. Errors end calls through the native API's table (`service.status_of`,
`service.abort`), and every request is counted in `seqcast_request_duration_seconds` under its
method's name (`ModelInfer`, `ModelStreamInfer`).

Tensors by task (N rows, T values per series, H horizon, Q quantile levels):

  translation  in   text BYTES [N] or [N, 1], UTF-8
               out  translation BYTES, finish_reason BYTES ("eos" | "length"), input_tokens
                    INT32, output_tokens INT32, each the shape of `text`
               parameters (optional) max_new_tokens, min_new_tokens, beam_size,
                    length_penalty (beam search); temperature, top_k, top_p, seed (sampling)
  forecast     in   series FP32 [N, T], right-padded; lengths INT32 or INT64 [N] (optional:
                    every series T long)
               out  point FP32 [N, H], quantiles FP32 [N, Q, H], context_used INT32 [N];
                    response parameters point ("median" | "mean") and quantile_levels
                    ("0.1,0.2,...", the order of the Q axis)
               parameters horizon (required)
               (the native API carries doubles; these FP32 tensors carry them rounded to float32)

Streaming (`ModelStreamInfer`): requests on one stream run concurrently; a translation answers
with one response per delivery of tokens, each holding every text's new piece ("" for a text
that gained nothing), so joining the pieces of a row gives the unary result; a forecast answers
with one response. A failed request answers one response whose `error_message` starts with its
status code ("[StatusCode.INVALID_ARGUMENT] ...", as tritonclient prints unary errors); the
stream goes on. With Triton's `triton_enable_empty_final_response` the last response of a
request is empty and carries `triton_final_response: true`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import metadata as package_metadata
from math import prod

import grpc
import numpy as np

from seqcast.bundle.strategies import BeamSearch, Finish, Greedy, Sampling, Strategy
from seqcast.inference import grpc_service_pb2 as pb
from seqcast.inference import grpc_service_pb2_grpc as pb_grpc
from seqcast.server import forecasting, metrics, translation
from seqcast.server.errors import InvalidArgument, ModelNotFound, ServingError, shown
from seqcast.server.models import LoadedModel, ModelRegistry
from seqcast.server.service import abort, status_of
from seqcast.server.settings import ServerSettings

log = logging.getLogger(__name__)

PLATFORM = "seqcast"

# Elements of each datatype: numpy type (little-endian in raw contents) and the contents field.
_DATATYPES: dict[str, tuple[np.dtype, str]] = {
    "BOOL": (np.dtype("?"), "bool_contents"),
    "INT8": (np.dtype("<i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "UINT8": (np.dtype("<u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
    "BYTES": (np.dtype(object), "bytes_contents"),
}

# Request parameters Triton's clients set themselves (priority, timeout, sequence batching):
# accepted and ignored, so a tritonclient call with them works; any other unknown name is refused.
_TRITON_PARAMETERS = frozenset({"priority", "timeout", "sequence_id", "sequence_start", "sequence_end", "triton_enable_empty_final_response"})
_EMPTY_FINAL = "triton_enable_empty_final_response"

_TRANSLATION_PARAMETERS: dict[str, type] = {
    "max_new_tokens": int, "min_new_tokens": int,
    "beam_size": int, "length_penalty": float,
    "temperature": float, "top_k": int, "top_p": float, "seed": int,
}
_FORECAST_PARAMETERS: dict[str, type] = {"horizon": int}
_BEAM = ("beam_size", "length_penalty")
_SAMPLING = ("temperature", "top_k", "top_p", "seed")
_FINISH = {None: b"", Finish.EOS: b"eos", Finish.LENGTH: b"length"}

# Tensor names, datatypes and shapes (-1: any length) by task, as ModelMetadata reports them.
_TRANSLATION_INPUTS = [("text", "BYTES", [-1])]
_TRANSLATION_OUTPUTS = [("translation", "BYTES", [-1]), ("finish_reason", "BYTES", [-1]),
                        ("input_tokens", "INT32", [-1]), ("output_tokens", "INT32", [-1])]
_FORECAST_INPUTS = [("series", "FP32", [-1, -1]), ("lengths", "INT64", [-1])]


@dataclass(frozen=True)
class Tensor:
    """A decoded input tensor: its datatype and elements (BYTES: an object array of bytes)."""

    datatype: str
    array: np.ndarray


@dataclass(frozen=True)
class Output:
    name: str
    datatype: str
    array: np.ndarray


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, Tensor]:
    """The request's input tensors by name, from `raw_input_contents` or typed contents; raises
    InvalidArgument naming the tensor for an unknown datatype or a size that does not match."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs: send one per input")
    tensors: dict[str, Tensor] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in tensors:
            raise InvalidArgument(f"input tensor {shown(name)} appears twice", name)
        if tensor.datatype not in _DATATYPES:
            raise InvalidArgument(f"input tensor {shown(name)} has unknown datatype {shown(tensor.datatype)}; known: {', '.join(_DATATYPES)}", name)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidArgument(f"input tensor {shown(name)} has shape {list(shape)}: every dimension must be 0 or more", name)
        dtype, field = _DATATYPES[tensor.datatype]
        if raw:
            values = _bytes_elements(name, raw[i]) if tensor.datatype == "BYTES" else _raw_elements(name, raw[i], dtype)
        else:
            values = np.array(list(getattr(tensor.contents, field)), dtype=dtype)
        if len(values) != prod(shape):
            raise InvalidArgument(
                f"input tensor {shown(name)} has shape {list(shape)}, which holds {prod(shape)} elements, but {len(values)} were sent", name
            )
        tensors[name] = Tensor(tensor.datatype, values.reshape(shape))
    return tensors


def _raw_elements(name: str, data: bytes, dtype: np.dtype) -> np.ndarray:
    if len(data) % dtype.itemsize:
        raise InvalidArgument(f"input tensor {shown(name)}: {len(data)} raw bytes are not a whole number of {dtype.itemsize}-byte elements", name)
    return np.frombuffer(data, dtype=dtype)


def _bytes_elements(name: str, data: bytes) -> np.ndarray:
    """BYTES raw contents: each element a 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise InvalidArgument(f"input tensor {shown(name)}: raw BYTES contents end inside an element's length", name)
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise InvalidArgument(f"input tensor {shown(name)}: raw BYTES element {len(elements)} runs past the end of the contents", name)
        elements.append(data[offset : offset + length])
        offset += length
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array


def encode_raw(output: Output) -> bytes:
    """An output's raw contents (what tritonclient's `as_numpy` reads)."""
    if output.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in output.array.reshape(-1))
    return np.ascontiguousarray(output.array, dtype=_DATATYPES[output.datatype][0]).tobytes()


def parameters(request: pb.ModelInferRequest, known: dict[str, type], kind: str) -> dict[str, int | float]:
    """The request's parameters as numbers; raises InvalidArgument for an unknown name or a
    value of the wrong type. Triton's own parameters are skipped."""
    values: dict[str, int | float] = {}
    for name, parameter in request.parameters.items():
        if name in _TRITON_PARAMETERS:
            continue
        if name not in known:
            raise InvalidArgument(f"unknown parameter {shown(name)}: {kind} models take {', '.join(known)}", name)
        choice = parameter.WhichOneof("parameter_choice")
        if choice in ("int64_param", "uint64_param"):
            values[name] = getattr(parameter, choice)
        elif choice == "double_param" and known[name] is float:
            values[name] = parameter.double_param
        else:
            wanted = "an integer (int64_param)" if known[name] is int else "a number (double_param or int64_param)"
            raise InvalidArgument(f"parameter {name} must be {wanted}, got {choice or 'no value'}", name)
    return values


def _strategy(values: dict[str, int | float]) -> Strategy:
    beam = [n for n in _BEAM if n in values]
    sampling = [n for n in _SAMPLING if n in values]
    if beam and sampling:
        raise InvalidArgument(f"parameters {beam} (beam search) and {sampling} (sampling) exclude each other: choose one strategy", beam[0])
    if beam:
        return BeamSearch(int(values.get("beam_size", 4)), float(values.get("length_penalty", 1.0)))
    if sampling:
        seed = values.get("seed")
        return Sampling(float(values.get("temperature", 1.0)), int(values.get("top_k", 0)), float(values.get("top_p", 1.0)),
                        None if seed is None else int(seed))
    return Greedy()


def _only(tensors: dict[str, Tensor], allowed: tuple[str, ...], kind: str) -> None:
    unknown = sorted(set(tensors) - set(allowed))
    if unknown:
        raise InvalidArgument(f"unknown input tensor {shown(unknown[0])}: {kind} models take {', '.join(allowed)}", unknown[0])


def _required(tensors: dict[str, Tensor], name: str, datatypes: tuple[str, ...], kind: str) -> Tensor:
    if name not in tensors:
        raise InvalidArgument(f"input tensor {name} is missing: {kind} models need it (see ModelMetadata)", name)
    tensor = tensors[name]
    if tensor.datatype not in datatypes:
        raise InvalidArgument(f"input tensor {name} must be {' or '.join(datatypes)}, got {tensor.datatype}", name)
    return tensor


def translation_texts(tensors: dict[str, Tensor]) -> tuple[list[str], tuple[int, ...]]:
    """The texts of input `text` and its shape ([N] or [N, 1])."""
    _only(tensors, ("text",), "translation")
    text = _required(tensors, "text", ("BYTES",), "translation")
    shape = text.array.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidArgument(f"input tensor text must have shape [N] or [N, 1], got {list(shape)}", "text")
    texts = []
    for i, element in enumerate(text.array.reshape(-1)):
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidArgument(f"input tensor text: element {i} is not UTF-8 text", "text") from None
    return texts, shape


def forecast_series(tensors: dict[str, Tensor]) -> list[np.ndarray]:
    """Each row of input `series` cut to its length in `lengths` (all of it without `lengths`)."""
    _only(tensors, ("series", "lengths"), "forecast")
    series = _required(tensors, "series", ("FP32",), "forecast").array
    if series.ndim != 2:
        raise InvalidArgument(f"input tensor series must have shape [N, T], got {list(series.shape)}", "series")
    rows, width = series.shape
    if "lengths" not in tensors:
        return list(series)
    lengths = _required(tensors, "lengths", ("INT32", "INT64"), "forecast").array
    if lengths.shape != (rows,):
        raise InvalidArgument(f"input tensor lengths must have shape [{rows}] (one per series row), got {list(lengths.shape)}", "lengths")
    for i, length in enumerate(lengths):
        if not 0 <= length <= width:
            raise InvalidArgument(f"input tensor lengths: element {i} is {length}; it must be between 0 and {width}", "lengths")
    return [row[:length] for row, length in zip(series, lengths)]


def _bool_parameter(request: pb.ModelInferRequest, name: str) -> bool:
    parameter = request.parameters.get(name)
    return parameter is not None and parameter.WhichOneof("parameter_choice") == "bool_param" and parameter.bool_param


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService` over the registry's models; `ready` follows server health."""

    def __init__(self, registry: ModelRegistry, settings: ServerSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.ready = False  # set by RunningServer.sync_health
        try:
            self.version = package_metadata.version("seqcast")
        except package_metadata.PackageNotFoundError:
            self.version = "unknown"

    # Health and metadata.

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        model = self.registry.models.get(request.name)
        matches = model is not None and request.version in ("", model.manifest.version)
        return pb.ModelReadyResponse(ready=self.ready and matches)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=PLATFORM, version=self.version, extensions=["parameters"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        try:
            model = self._model(request.name, request.version)
        except ServingError as e:
            await abort(context, e, "ModelMetadata")
            raise
        if model.manifest.task == "translation":
            inputs, outputs = _TRANSLATION_INPUTS, _TRANSLATION_OUTPUTS
        else:
            levels = len(_levels(model))
            inputs = _FORECAST_INPUTS
            outputs = [("point", "FP32", [-1, -1]), ("quantiles", "FP32", [-1, levels, -1]), ("context_used", "INT32", [-1])]

        def tensors(specs: list[tuple[str, str, list[int]]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=d, shape=s) for n, d, s in specs]

        return pb.ModelMetadataResponse(
            name=model.name, versions=[model.manifest.version], platform=PLATFORM, inputs=tensors(inputs), outputs=tensors(outputs)
        )

    # Inference.

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return await self._infer(request, context.time_remaining())
        except BaseException as e:
            code = status_of(e)
            await abort(context, e, "ModelInfer")
            raise
        finally:
            metrics.observe_request(self._label(request.model_name), "ModelInfer", code, time.perf_counter() - started)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Runs each request of the stream as it arrives, concurrently; their responses share
        one queue, drained here in arrival order. None on the queue: the client is done and every
        request has answered."""
        queue: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def read() -> None:
            try:
                async for request in requests:
                    task = asyncio.create_task(self._stream_request(request, context.time_remaining(), queue.put_nowait))
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:
                    await asyncio.wait(set(running))
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await queue.get()) is not None:
                yield response
            await reader  # raises what ended the reading, if anything did
        finally:
            for task in [reader, *running]:
                task.cancel()

    async def _stream_request(
        self, request: pb.ModelInferRequest, time_remaining: float | None, put: Callable[[pb.ModelStreamInferResponse], None]
    ) -> None:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            async for response in self._stream(request, time_remaining):
                put(pb.ModelStreamInferResponse(infer_response=response))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:
            code = status_of(e)
            if isinstance(e, ServingError):
                message = str(e)
            else:
                log.error("ModelStreamInfer failed", exc_info=e)
                message = "internal error in ModelStreamInfer; the server log has the details"
            put(pb.ModelStreamInferResponse(
                error_message=f"[StatusCode.{code.name}] {message}",
                infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
            ))
        finally:
            metrics.observe_request(self._label(request.model_name), "ModelStreamInfer", code, time.perf_counter() - started)

    async def _infer(self, request: pb.ModelInferRequest, time_remaining: float | None) -> pb.ModelInferResponse:
        model = self._model(request.model_name, request.model_version)
        tensors = decode_inputs(request)
        if model.manifest.task == "translation":
            job, shape = self._translate_job(model, request, tensors, time_remaining)
            results = await translation.translate(job)
            rows = [(r.text, r.finish, r.input_tokens, r.output_tokens) for r in results]
            return _response(request, model, _translation_outputs(rows, shape))
        return await self._forecast(model, request, tensors, time_remaining)

    async def _stream(self, request: pb.ModelInferRequest, time_remaining: float | None) -> AsyncIterator[pb.ModelInferResponse]:
        """The responses of one streamed request: translation pieces as they come, or a forecast."""
        model = self._model(request.model_name, request.model_version)
        tensors = decode_inputs(request)
        empty_final = _bool_parameter(request, _EMPTY_FINAL)
        final = {"triton_final_response": pb.InferParameter(bool_param=False)} if empty_final else {}
        if model.manifest.task == "translation":
            job, shape = self._translate_job(model, request, tensors, time_remaining)
            tokens = [0] * len(job.sources)
            async for pieces in translation.translate_stream(job):
                rows: list[tuple[str, Finish | None, int, int]] = [("", None, len(src), n) for src, n in zip(job.sources, tokens)]
                for piece in pieces:
                    tokens[piece.index] = piece.output_tokens
                    rows[piece.index] = (piece.text, piece.finish, len(job.sources[piece.index]), piece.output_tokens)
                yield _response(request, model, _translation_outputs(rows, shape), final)
        else:
            yield await self._forecast(model, request, tensors, time_remaining, final)
        if empty_final:
            yield pb.ModelInferResponse(
                model_name=model.name, model_version=model.manifest.version, id=request.id,
                parameters={"triton_final_response": pb.InferParameter(bool_param=True)},
            )

    def _translate_job(
        self, model: LoadedModel, request: pb.ModelInferRequest, tensors: dict[str, Tensor], time_remaining: float | None
    ) -> tuple[translation.TranslateJob, tuple[int, ...]]:
        values = parameters(request, _TRANSLATION_PARAMETERS, "translation")
        _check_outputs(request, [name for name, _, _ in _TRANSLATION_OUTPUTS])
        texts, shape = translation_texts(tensors)
        max_new, min_new = values.get("max_new_tokens"), values.get("min_new_tokens")
        job = translation.prepare(
            model, texts, None if max_new is None else int(max_new), self.settings, time_remaining, _strategy(values),
            None if min_new is None else int(min_new),
        )
        return job, shape

    async def _forecast(
        self, model: LoadedModel, request: pb.ModelInferRequest, tensors: dict[str, Tensor], time_remaining: float | None,
        extra: dict[str, pb.InferParameter] | None = None,
    ) -> pb.ModelInferResponse:
        values = parameters(request, _FORECAST_PARAMETERS, "forecast")
        _check_outputs(request, ["point", "quantiles", "context_used"])
        if "horizon" not in values:
            raise InvalidArgument("parameter horizon is missing: the number of steps to forecast (an int64 parameter)", "horizon")
        job = await forecasting.prepare(model, forecast_series(tensors), int(values["horizon"]), self.settings, time_remaining)
        results = await forecasting.forecast(job)
        spec = model.manifest.forecast
        assert spec is not None
        point, levels = spec.columns.index(spec.point), _levels(model)
        columns = [i for i, _ in levels]
        outputs = [
            Output("point", "FP32", np.stack([r.columns[:, point] for r in results])),
            Output("quantiles", "FP32", np.stack([r.columns[:, columns].T for r in results])),
            Output("context_used", "INT32", np.array([r.context_used for r in results])),
        ]
        described = {
            "point": pb.InferParameter(string_param="mean" if spec.point == "mean" else "median"),
            "quantile_levels": pb.InferParameter(string_param=",".join(f"{q:g}" for _, q in levels)),
        }
        return _response(request, model, outputs, {**described, **(extra or {})})

    def _model(self, name: str, version: str) -> LoadedModel:
        if not name:
            raise InvalidArgument("model_name is empty: name the model to use (tritonclient's model_name)", "model_name")
        model = self.registry.models.get(name)
        if model is None:
            raise ModelNotFound(f"model {shown(name)} is not loaded; loaded models: {sorted(self.registry.models) or 'none'}")
        if version and version != model.manifest.version:
            raise ModelNotFound(f"model {shown(name)} version {shown(version)} is not loaded; it serves version {model.manifest.version}")
        return model

    def _label(self, name: str) -> str:
        """The model a request is counted under: its name if loaded, else "unknown" (so made-up
        names cannot grow the metric's label set)."""
        return name if name in self.registry.models else "unknown"


def _levels(model: LoadedModel) -> list[tuple[int, float]]:
    """(column, level) of each quantile column of a forecast model, ascending."""
    spec = model.manifest.forecast
    assert spec is not None
    return [(i, float(c)) for i, c in enumerate(spec.columns) if c != "mean"]


def _check_outputs(request: pb.ModelInferRequest, names: list[str]) -> None:
    for output in request.outputs:
        if output.name not in names:
            raise InvalidArgument(f"unknown output tensor {shown(output.name)}: this model returns {', '.join(names)}", output.name)


def _translation_outputs(rows: list[tuple[str, Finish | None, int, int]], shape: tuple[int, ...]) -> list[Output]:
    """Outputs of (text, finish, input tokens, output tokens) per row, in the input's shape."""
    texts = np.empty(len(rows), dtype=object)
    texts[:] = [text.encode("utf-8") for text, _, _, _ in rows]
    finishes = np.empty(len(rows), dtype=object)
    finishes[:] = [_FINISH.get(finish, b"") for _, finish, _, _ in rows]
    return [
        Output("translation", "BYTES", texts.reshape(shape)),
        Output("finish_reason", "BYTES", finishes.reshape(shape)),
        Output("input_tokens", "INT32", np.array([r[2] for r in rows]).reshape(shape)),
        Output("output_tokens", "INT32", np.array([r[3] for r in rows]).reshape(shape)),
    ]


def _response(
    request: pb.ModelInferRequest, model: LoadedModel, outputs: list[Output], parameters: dict[str, pb.InferParameter] | None = None
) -> pb.ModelInferResponse:
    """The response with the outputs the request asked for (all when it named none), raw-encoded."""
    wanted = {o.name for o in request.outputs}
    chosen = [o for o in outputs if not wanted or o.name in wanted]
    return pb.ModelInferResponse(
        model_name=model.name,
        model_version=model.manifest.version,
        id=request.id,
        parameters=parameters or {},
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=o.name, datatype=o.datatype, shape=o.array.shape) for o in chosen],
        raw_output_contents=[encode_raw(o) for o in chosen],
    )
