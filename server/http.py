"""The HTTP/JSON front end, for callers without gRPC: LibreTranslate's `POST /translate` and
`GET /languages`, and `POST /v1/timeseries/forecast` in the shape KServe proposes for time
series. Off unless `http_port` is set; plaintext only (put it behind a TLS proxy if needed).

Builds on aiohttp's web server, started on the gRPC server's own event loop (`start_http`), and
on the task layer (`seqcast.server.translation`, `seqcast.server.forecasting`), as the gRPC front
ends do: same limits, same engine, same `seqcast_request_duration_seconds` series (methods
`http.translate`, `http.forecast`). This module only turns JSON into the task layer's arguments
and results back into JSON.

Errors: domain errors map through the native API's table (`service.status_of`) to an HTTP status
(400 INVALID_ARGUMENT, 404 NOT_FOUND, 503 RESOURCE_EXHAUSTED, 504 DEADLINE_EXCEEDED, 500
INTERNAL). `/translate` answers LibreTranslate's `{"error": message}` plus `"field"` naming the
request field at fault; the forecast endpoint answers KServe's error object, `{"status": "error",
"error": {"code", "message", "param", "type"}}`, with `param` naming the field.
"""

from __future__ import annotations

import calendar
import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from numbers import Real
from typing import Any

import grpc
from aiohttp import web

from seqcast.server import forecasting, metrics, translation
from seqcast.server.errors import InvalidArgument, ServingError, shown
from seqcast.server.models import LoadedModel, ModelRegistry
from seqcast.server.service import status_of
from seqcast.server.settings import ServerSettings

log = logging.getLogger(__name__)

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 400,  # as Google APIs map it
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# English names of the language codes bundles declare; a code not here is shown as itself.
LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish",
    "fi": "Finnish", "fr": "French", "hu": "Hungarian", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}

# KServe's time-series frequencies (long and short names) and how far one step goes.
_FREQUENCIES = {"SECOND": "S", "S": "S", "MINUTE": "T", "T": "T", "HOUR": "H", "H": "H", "DAY": "D", "D": "D",
                "WEEK": "W", "W": "W", "MONTH": "M", "M": "M", "QUARTER": "Q", "Q": "Q", "YEAR": "Y", "Y": "Y"}
_STEP = {"S": timedelta(seconds=1), "T": timedelta(minutes=1), "H": timedelta(hours=1), "D": timedelta(days=1),
         "W": timedelta(weeks=1)}
_MONTHS = {"M": 1, "Q": 3, "Y": 12}

@dataclass
class Call:
    """What the edge learns from a handler: the model the request went to (its metrics label)."""

    model: str = "unknown"


Handler = Callable[["HttpFrontEnd", web.Request, Call], Awaitable[Any]]


def _edge(method: str, style: str) -> Callable[[Handler], Callable[["HttpFrontEnd", web.Request], Awaitable[web.Response]]]:
    """Wraps a handler that returns a JSON-able reply: errors to HTTP statuses and bodies of the
    endpoint's `style` ("libretranslate" or "kserve"), duration and code to metrics under
    `method`. The handler records the model it chose in its `Call`."""

    def wrap(handler: Handler) -> Callable[["HttpFrontEnd", web.Request], Awaitable[web.Response]]:
        @functools.wraps(handler)
        async def edge(self: HttpFrontEnd, request: web.Request) -> web.Response:
            started, code, call = time.perf_counter(), grpc.StatusCode.OK, Call()
            try:
                return web.json_response(await handler(self, request, call))
            except web.HTTPException as e:  # aiohttp's own refusals (body too large, ...)
                code = grpc.StatusCode.INVALID_ARGUMENT if e.status < 500 else grpc.StatusCode.INTERNAL
                raise
            except Exception as e:
                code = status_of(e)
                if not isinstance(e, ServingError):
                    log.error("%s failed", method, exc_info=e)
                return _error(e, code, style)
            except BaseException as e:
                code = status_of(e)  # cancelled: the client went away
                raise
            finally:
                metrics.observe_request(call.model, method, code, time.perf_counter() - started)

        return edge

    return wrap


def _error(error: Exception, code: grpc.StatusCode, style: str) -> web.Response:
    status = _HTTP_STATUS.get(code, 500)
    message = str(error) if isinstance(error, ServingError) else "internal error; the server log has the details"
    field = error.field if isinstance(error, InvalidArgument) else None
    if style == "kserve":
        body: dict[str, Any] = {"status": "error", "error": {"code": code.name, "message": message, "param": field, "type": code.name.lower()}}
    else:
        body = {"error": message, "field": field}
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response(body, status=status, headers=headers)


async def read_body(request: web.Request) -> dict[str, Any]:
    """A JSON object body, or a form (urlencoded or multipart; a repeated key gives a list)."""
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        return {key: values if len(values := form.getall(key)) > 1 else values[0] for key in set(form.keys())}
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"the body is not valid JSON ({e}); send a JSON object with Content-Type: application/json", "body") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"the body must be a JSON object, got {type(body).__name__}", "body")
    return body


def _renamed(error: InvalidArgument, rename: Callable[[str], str]) -> InvalidArgument:
    """The task layer's error with its field in this endpoint's terms."""
    return InvalidArgument(str(error), None if error.field is None else rename(error.field))


class HttpFrontEnd:
    """The endpoints over the registry's models."""

    def __init__(self, registry: ModelRegistry, settings: ServerSettings) -> None:
        self.registry = registry
        self.settings = settings

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_message_bytes)
        app.router.add_post("/translate", self.translate)
        app.router.add_get("/languages", self.languages)
        app.router.add_post("/v1/timeseries/forecast", self.forecast)
        return app

    def _pairs(self) -> list[LoadedModel]:
        """Translation models that declare their languages, the default first."""
        models = [m for m in self.registry.models.values()
                  if m.manifest.task == "translation" and m.manifest.source_language and m.manifest.target_language]
        return sorted(models, key=lambda m: (m.name != self.registry.defaults["translation"], m.name))

    async def languages(self, request: web.Request) -> web.Response:
        """LibreTranslate's `GET /languages`: each source language with the targets it reaches."""
        targets: dict[str, set[str]] = {}
        for m in self._pairs():
            targets.setdefault(str(m.manifest.source_language), set()).add(str(m.manifest.target_language))
        return web.json_response([
            {"code": code, "name": LANGUAGE_NAMES.get(code, code), "targets": sorted(reached)}
            for code, reached in sorted(targets.items())
        ])

    def _pick(self, source: object, target: object) -> tuple[LoadedModel, bool]:
        """The model translating `source` to `target`, and whether the source was "auto"."""
        for name, value in (("source", source), ("target", target)):
            if not isinstance(value, str) or not value:
                raise InvalidArgument(f'{name} is missing: a language code such as "en" (GET /languages lists them)', name)
        pairs = self._pairs()
        available = ", ".join(f"{m.manifest.source_language}->{m.manifest.target_language}" for m in pairs) or "none"
        auto = source == "auto"
        if auto:
            sources = {m.manifest.source_language for m in pairs if m.manifest.target_language == target}
            if len(sources) != 1:
                raise InvalidArgument(
                    f'source "auto" needs exactly one source language for target {shown(target)}, found {sorted(map(str, sources))}: '
                    f"name the source (available: {available})", "source",
                )
            source = sources.pop()
        if not any(m.manifest.source_language == source for m in pairs):
            raise InvalidArgument(f"no model translates from {shown(source)}; available: {available}", "source")
        for m in pairs:
            if m.manifest.source_language == source and m.manifest.target_language == target:
                return m, auto
        raise InvalidArgument(f"no model translates {shown(source)} to {shown(target)}; available: {available}", "target")

    @_edge("http.translate", "libretranslate")
    async def translate(self, request: web.Request, call: Call) -> dict[str, Any]:
        """LibreTranslate's `POST /translate`: `q` a string or a list of strings."""
        body = await read_body(request)
        q = body.get("q")
        if isinstance(q, str):
            texts, single = [q], True
        elif isinstance(q, list) and all(isinstance(t, str) for t in q):
            texts, single = q, False
        else:
            raise InvalidArgument("q must be a string or a list of strings: the text(s) to translate", "q")
        form = body.get("format", "text")
        if form == "html":
            raise InvalidArgument('format "html" is not supported: send plain text with format "text"', "format")
        if form != "text":
            raise InvalidArgument(f'format must be "text", got {shown(form)}', "format")
        model, auto = self._pick(body.get("source"), body.get("target"))
        call.model = model.name
        try:
            job = translation.prepare(model, texts, None, self.settings, None)
        except InvalidArgument as e:
            raise _renamed(e, lambda f: "q" if single else re.sub(r"^texts", "q", f)) from None
        results = [r.text for r in await translation.translate(job)]
        reply: dict[str, Any] = {"translatedText": results[0] if single else results}
        if auto:
            detected = {"confidence": 100.0, "language": model.manifest.source_language}
            reply["detectedLanguage"] = detected if single else [detected] * len(results)
        return reply

    @_edge("http.forecast", "kserve")
    async def forecast(self, request: web.Request, call: Call) -> dict[str, Any]:
        """`POST /v1/timeseries/forecast`, KServe's time-series forecast shape (docs in README)."""
        body = await read_body(request)
        name = body.get("model", "")
        if not isinstance(name, str):
            raise InvalidArgument("model must be a string: a forecast model's name (empty: the default)", "model")
        model = self.registry.get(name, "forecast")
        call.model = model.name
        inputs = _inputs(body.get("inputs"))
        options = body.get("options", {})
        if not isinstance(options, dict):
            raise InvalidArgument("options must be an object with horizon (and optionally quantiles)", "options")
        horizon = options.get("horizon")
        if not isinstance(horizon, int) or isinstance(horizon, bool):
            raise InvalidArgument("options.horizon must be an integer: the number of steps to forecast", "options.horizon")
        levels = _chosen_levels(model, options.get("quantiles"))
        try:
            job = await forecasting.prepare(model, [item.values for item in inputs], horizon, self.settings, None)
        except InvalidArgument as e:
            raise _renamed(e, _forecast_field) from None
        results = await forecasting.forecast(job)
        spec = model.manifest.forecast
        assert spec is not None
        point = spec.columns.index(spec.point)
        outputs = []
        for item, result in zip(inputs, results):
            columns = result.columns
            content: dict[str, Any] = {
                "type": "univariate_time_series",
                "name": item.name,
                "mean_forecast": columns[:, point].tolist(),
                "point": "mean" if spec.point == "mean" else "median",
                "frequency": item.frequency or spec.frequency,
                "start_timestamp": _forecast_start(item, len(item.values)),
                "context_used": result.context_used,
            }
            if levels is not None:
                content["quantiles"] = {label: columns[:, column].tolist() for label, column in levels}
            outputs.append({"type": "time_series_forecast", "id": f"ts-{uuid.uuid4().hex}", "status": "completed", "content": [content]})
        used = sum(r.context_used for r in results)
        return {
            "id": f"forecast-{uuid.uuid4().hex}",
            "created_at": int(time.time()),
            "status": "completed",
            "error": None,
            "model": model.name,
            "model_version": model.manifest.version,
            "outputs": outputs,
            "usage": {"prompt_tokens": used, "completion_tokens": horizon * len(results), "total_tokens": used + horizon * len(results)},
        }


@dataclass(frozen=True)
class SeriesInput:
    """One entry of a forecast request's `inputs`."""

    name: str
    values: list[float]
    frequency: str | None
    start: datetime | None


def _inputs(value: object) -> list[SeriesInput]:
    if not isinstance(value, list) or not value:
        raise InvalidArgument("inputs must be a non-empty list of series objects ({\"name\", \"series\", ...})", "inputs")
    items, names = [], set()
    for i, item in enumerate(value):
        at = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise InvalidArgument(f"{at} must be an object with name and series", at)
        kind = item.get("type", "univariate_time_series")
        if kind != "univariate_time_series":
            raise InvalidArgument(f'{at}.type {shown(kind)} is not supported: only "univariate_time_series"', f"{at}.type")
        series = item.get("series")
        if not isinstance(series, list) or not all(isinstance(v, Real) and not isinstance(v, bool) for v in series):
            raise InvalidArgument(f"{at}.series must be a list of numbers", f"{at}.series")
        name = item.get("name", str(i))
        if not isinstance(name, str) or name in names:
            raise InvalidArgument(f"{at}.name must be a string unique in the request, got {shown(name)}", f"{at}.name")
        names.add(name)
        frequency = item.get("frequency")
        if frequency is not None and frequency not in _FREQUENCIES:
            raise InvalidArgument(f"{at}.frequency {shown(frequency)} is not one of {', '.join(_FREQUENCIES)}", f"{at}.frequency")
        start = item.get("start_timestamp")
        try:
            parsed = None if start is None else datetime.fromisoformat(start)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{at}.start_timestamp must be an ISO 8601 time, got {shown(start)}", f"{at}.start_timestamp") from None
        items.append(SeriesInput(name, [float(v) for v in series], frequency, parsed))
    return items


def _chosen_levels(model: LoadedModel, requested: object) -> list[tuple[str, int]] | None:
    """(label, column) of each requested quantile level; None when none were requested."""
    if requested is None:
        return None
    spec = model.manifest.forecast
    assert spec is not None
    columns = {float(c): i for i, c in enumerate(spec.columns) if c != "mean"}
    if not isinstance(requested, list):
        raise InvalidArgument("options.quantiles must be a list of levels such as [0.1, 0.5, 0.9]", "options.quantiles")
    chosen = []
    for k, level in enumerate(requested):
        if not isinstance(level, Real) or isinstance(level, bool) or float(level) not in columns:
            raise InvalidArgument(
                f"options.quantiles[{k}] is {shown(level)}; model {model.name} forecasts the levels {sorted(columns)}",
                f"options.quantiles[{k}]",
            )
        chosen.append((f"{float(level):g}", columns[float(level)]))
    return chosen


def _forecast_field(field: str) -> str:
    """A forecast field of the task layer ("series[2].values[5]") in this endpoint's terms."""
    field = re.sub(r"^series\[(\d+)\]\.values", r"inputs[\1].series", field)
    return {"series": "inputs", "horizon": "options.horizon"}.get(field, field)


def _forecast_start(item: SeriesInput, observed: int) -> str | None:
    """The time of the first forecast step: `observed` steps of the series' frequency after its start."""
    if item.start is None or item.frequency is None:
        return None
    unit = _FREQUENCIES[item.frequency]
    if unit in _STEP:
        moved = item.start + observed * _STEP[unit]
    else:
        months = item.start.month - 1 + observed * _MONTHS[unit]
        year, month = item.start.year + months // 12, months % 12 + 1
        moved = item.start.replace(year=year, month=month, day=min(item.start.day, calendar.monthrange(year, month)[1]))
    return moved.isoformat().replace("+00:00", "Z")


@dataclass
class HttpServer:
    """The running HTTP front end."""

    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        """Stops listening; running requests get the runner's shutdown timeout to finish."""
        await self.runner.cleanup()


async def start_http(registry: ModelRegistry, settings: ServerSettings) -> HttpServer:
    """Serves the endpoints on `settings.http_host:http_port` (0 picks a free port) on the running
    event loop; a client that disconnects cancels its request."""
    assert settings.http_port is not None
    runner = web.AppRunner(
        HttpFrontEnd(registry, settings).app(), access_log=None, handler_cancellation=True, shutdown_timeout=settings.drain_seconds
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    port = runner.addresses[0][1]
    return HttpServer(runner, port)
