"""Python client for a seqcast server: the `Translation`, `Forecasting`, `Models` and
`grpc.health.v1` services.

Built on the generated stubs in `seqcast.v1` and a plain `grpc.Channel`. Results come back as
frozen dataclasses rather than protobuf messages, finish reasons as lowercase strings ("eos",
"length"), and every failed call raises `SeqcastError` carrying the gRPC status code.

Targets are gRPC names: `host:port`, or `dns:///name:port` for every address a DNS name has
(a Kubernetes headless Service), calls spread over them round robin. `Tls` turns on TLS, and
mutual TLS with a client certificate.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqcast.v1 import seqcast_pb2, seqcast_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True)
class BeamSearch:
    """Beam search: the best of `beam_size` hypotheses by log-probability / length ** length_penalty."""

    beam_size: int = 4
    length_penalty: float = 1.0


@dataclass(frozen=True)
class Sampling:
    """Random draws from the model's distribution; a `seed` makes the output reproducible."""

    temperature: float = 1.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int | None = None


class SeqcastError(Exception):
    """A failed call: the gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> SeqcastError:
        # A failed call's RpcError is also a grpc.Call; anything else is reported as UNKNOWN.
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        return cls(code, details or "")


@dataclass(frozen=True)
class Alignments:
    """Word alignments of a text: for each output token, how much it attended to each source token
    (one cross-attention layer of the model's decoder, averaged over heads)."""

    # Tokenizer pieces of the source, end-of-sequence included; in a stream only on an index's first chunk.
    source_tokens: list[str]
    target_tokens: list[str]  # one per output token
    weights: list[list[float]]  # one row per target token, one weight per source token; a row sums to 1


@dataclass(frozen=True)
class Translation:
    """The translation of one request text."""

    text: str
    finish_reason: str  # "eos" or "length"
    input_tokens: int
    output_tokens: int
    alignments: Alignments | None = None  # set when asked for


@dataclass(frozen=True)
class TranslationChunk:
    """A piece of one text's translation; joining the pieces of an index gives `Translation.text`
    (and joining their alignment rows gives `Translation.alignments`' rows)."""

    index: int  # position of the text in the request
    text: str
    finish_reason: str | None  # set on the last chunk of an index, None before
    input_tokens: int
    output_tokens: int
    alignments: Alignments | None = None  # the rows of this chunk's tokens, when asked for


@dataclass(frozen=True)
class SeriesForecast:
    """The forecast of one request series, one value per step ahead."""

    point: list[float]  # the median or the mean, see `ForecastResult.point`
    quantiles: dict[float, list[float]]  # level -> values, ascending levels; empty for point-only models
    context_used: int  # values of the series the model saw (its last ones)


@dataclass(frozen=True)
class ForecastResult:
    """The forecasts of one request, one per series in request order."""

    model: str
    model_version: str
    point: str  # "median" or "mean"
    forecasts: list[SeriesForecast]


@dataclass(frozen=True)
class ForecastInfo:
    """What a forecast model accepts and returns."""

    # Values per series the model sees, and the fewest it accepts.
    context_length: int
    min_context: int
    max_horizon: int
    quantile_levels: list[float]  # ascending; empty for point-only models
    point: str  # "median" or "mean"
    # pandas offset alias of the training data (e.g. "QS", "30min") and its seasonal period.
    frequency: str
    season_length: int


@dataclass(frozen=True)
class ModelInfo:
    """A model the server has loaded."""

    name: str
    version: str
    task: str  # "translation" or "forecast"
    architecture: str
    execution_provider: str
    max_source_tokens: int
    max_new_tokens: int
    metadata: dict[str, str] = field(default_factory=dict)
    is_default: bool = False  # the server's default model for its task
    forecast: ForecastInfo | None = None  # set for forecast models


def _finish_reason(value: int) -> str:
    """FINISH_REASON_EOS -> "eos", FINISH_REASON_LENGTH -> "length"."""
    return seqcast_pb2.FinishReason.Name(value).removeprefix("FINISH_REASON_").lower()


# Replies to large forecast calls exceed gRPC's default 4 MiB; the server's default limit is 64 MiB.
# Calls go round robin over every address the target resolves to (one for host:port).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
]


@dataclass(frozen=True)
class Tls:
    """TLS for the channel, from PEM files.

    `ca_file`: the CA that signed the server's certificate (None: the system's trusted roots).
    `cert_file` and `key_file`: the client's certificate and key, for servers that require
    mutual TLS. `server_name`: the name to check the server's certificate against, when it is
    not the target's host name.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path} is not a file")

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


def open_channel(target: str, tls: Tls | None = None, extra_options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """A channel to `target` with seqcast's options (and `extra_options`): plaintext, or TLS with `tls`."""
    options = [*CHANNEL_OPTIONS, *extra_options]
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, tls.credentials(), options=options)


class SeqcastClient:
    """Client for one seqcast server; use as a context manager to close the channel.

    >>> with SeqcastClient("127.0.0.1:50051") as client:
    ...     client.translate(["Good morning."])[0].text

    Every call takes `timeout`, its deadline in seconds; a call past it raises
    `SeqcastError` with `DEADLINE_EXCEEDED`, and the server stops working on it.
    """

    def __init__(self, target: str = DEFAULT_TARGET, channel: grpc.Channel | None = None, tls: Tls | None = None) -> None:
        """Connects lazily to `target` (plaintext, or TLS with `tls`), or uses `channel` (left open
        on close) when given."""
        if channel is not None and tls is not None:
            raise ValueError("pass tls or a ready channel, not both")
        self.target = target
        self.tls = tls
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else open_channel(target, tls)
        self._translation = seqcast_pb2_grpc.TranslationStub(self._channel)
        self._forecasting = seqcast_pb2_grpc.ForecastingStub(self._channel)
        self._models = seqcast_pb2_grpc.ModelsStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> SeqcastClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel if this client created it."""
        if self._owns_channel:
            self._channel.close()

    def wait_ready(self, timeout: float) -> None:
        """Blocks until the channel is connected; raises SeqcastError(UNAVAILABLE) after `timeout` s."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise SeqcastError(
                grpc.StatusCode.UNAVAILABLE, f"{self.target} not ready after {timeout:g}s"
            ) from None

    def translate(
        self,
        texts: str | Sequence[str],
        model: str = "",
        max_new_tokens: int | None = None,
        timeout: float | None = None,
        decoding: BeamSearch | Sampling | None = None,
        min_new_tokens: int | None = None,
        alignments: bool = False,
    ) -> list[Translation]:
        """Translates `texts` (one string or several) and returns one result per text, in order.

        `model` empty means the server's default; `max_new_tokens` None means the model's maximum;
        `timeout` is the call's deadline in seconds; `decoding` None means greedy;
        `min_new_tokens` holds back end-of-sequence until that many tokens were generated;
        `alignments` returns each text's word alignments too (FAILED_PRECONDITION from a model
        without them).
        """
        request = _request(texts, model, max_new_tokens, decoding, min_new_tokens, alignments)
        try:
            response = self._translation.Translate(request, timeout=timeout)
        except grpc.RpcError as e:
            raise SeqcastError.from_rpc_error(e) from None
        return [
            Translation(r.text, _finish_reason(r.finish_reason), r.input_tokens, r.output_tokens,
                        _alignments(r.alignments) if r.HasField("alignments") else None)
            for r in response.results
        ]

    def translate_stream(
        self,
        texts: str | Sequence[str],
        model: str = "",
        max_new_tokens: int | None = None,
        timeout: float | None = None,
        decoding: BeamSearch | Sampling | None = None,
        min_new_tokens: int | None = None,
        alignments: bool = False,
    ) -> Iterator[TranslationChunk]:
        """Like `translate`, but yields pieces as they are decoded.

        Pieces of one index arrive in order; pieces of different indices may interleave.
        Closing the iterator early cancels the call. With beam search a text's tokens arrive
        together when its search ends. With `alignments` each chunk carries the rows of its tokens.
        """
        request = _request(texts, model, max_new_tokens, decoding, min_new_tokens, alignments)
        call = self._translation.TranslateStream(request, timeout=timeout)
        return _chunks(call)

    def forecast(
        self,
        series: Sequence[Sequence[float]],
        horizon: int,
        model: str = "",
        timeout: float | None = None,
    ) -> ForecastResult:
        """Forecasts each series (values oldest first) `horizon` steps ahead; one result per series.

        `model` empty means the server's default forecast model; `timeout` is the call's deadline
        in seconds.
        """
        request = _forecast_request(series, horizon, model)
        try:
            response = self._forecasting.Forecast(request, timeout=timeout)
        except grpc.RpcError as e:
            raise SeqcastError.from_rpc_error(e) from None
        return _forecast_result(response)

    def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        """The models the server has loaded; the default model of each task has `is_default`."""
        try:
            response = self._models.ListModels(seqcast_pb2.ListModelsRequest(), timeout=timeout)
        except grpc.RpcError as e:
            raise SeqcastError.from_rpc_error(e) from None
        defaults = {
            "translation": response.default_translation_model,
            "forecast": response.default_forecast_model,
        }
        return [
            ModelInfo(
                name=m.name,
                version=m.version,
                task=m.task,
                architecture=m.architecture,
                execution_provider=m.execution_provider,
                max_source_tokens=m.max_source_tokens,
                max_new_tokens=m.max_new_tokens,
                metadata=dict(m.metadata),
                is_default=m.name == defaults.get(m.task),
                forecast=_forecast_info(m.forecast) if m.HasField("forecast") else None,
            )
            for m in response.models
        ]

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The serving status of `service` ("" is the whole server), e.g. "SERVING"."""
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = self._health.Check(request, timeout=timeout)
        except grpc.RpcError as e:
            raise SeqcastError.from_rpc_error(e) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _request(
    texts: str | Sequence[str],
    model: str,
    max_new_tokens: int | None,
    decoding: BeamSearch | Sampling | None = None,
    min_new_tokens: int | None = None,
    alignments: bool = False,
) -> seqcast_pb2.TranslateRequest:
    texts = [texts] if isinstance(texts, str) else list(texts)
    # Leave optional fields unset for None: the server then uses its defaults.
    request = seqcast_pb2.TranslateRequest(
        model=model, texts=texts, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, alignments=alignments
    )
    if isinstance(decoding, BeamSearch):
        request.decoding.beam_search.CopyFrom(
            seqcast_pb2.BeamSearch(beam_size=decoding.beam_size, length_penalty=decoding.length_penalty)
        )
    elif isinstance(decoding, Sampling):
        request.decoding.sampling.CopyFrom(seqcast_pb2.Sampling(
            temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p, seed=decoding.seed
        ))
    return request


def _forecast_request(
    series: Sequence[Sequence[float]], horizon: int, model: str
) -> seqcast_pb2.ForecastRequest:
    if len(series) > 0 and isinstance(series[0], numbers.Real):
        raise TypeError("series is a list of series; pass one series as [values]")
    # float() accepts NumPy scalars of any width, which the protobuf field does not.
    messages = [seqcast_pb2.Series(values=[float(v) for v in s]) for s in series]
    return seqcast_pb2.ForecastRequest(model=model, series=messages, horizon=horizon)


def _forecast_result(response: seqcast_pb2.ForecastResponse) -> ForecastResult:
    forecasts = [
        SeriesForecast(
            point=list(f.point),
            quantiles={q.level: list(q.values) for q in f.quantiles},
            context_used=f.context_used,
        )
        for f in response.forecasts
    ]
    return ForecastResult(response.model, response.model_version, response.point, forecasts)


def _forecast_info(info: seqcast_pb2.ForecastInfo) -> ForecastInfo:
    return ForecastInfo(
        context_length=info.context_length,
        min_context=info.min_context,
        max_horizon=info.max_horizon,
        quantile_levels=list(info.quantile_levels),
        point=info.point,
        frequency=info.frequency,
        season_length=info.season_length,
    )


def _alignments(a: seqcast_pb2.Alignments) -> Alignments:
    return Alignments(list(a.source_tokens), [r.target_token for r in a.rows], [list(r.weights) for r in a.rows])


def _chunks(call: Iterator[seqcast_pb2.TranslateChunk]) -> Iterator[TranslationChunk]:
    try:
        for c in call:
            reason = _finish_reason(c.finish_reason) if c.finish_reason else None
            aligned = _alignments(c.alignments) if c.HasField("alignments") else None
            yield TranslationChunk(c.index, c.text, reason, c.input_tokens, c.output_tokens, aligned)
    except grpc.RpcError as e:
        raise SeqcastError.from_rpc_error(e) from None
    finally:
        call.cancel()  # a no-op once the stream has ended; frees it when the caller stops early
