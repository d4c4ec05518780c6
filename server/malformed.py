"""Requests whose bytes do not parse: INVALID_ARGUMENT on every service, and one log line per
interval instead of a traceback per call.

gRPC parses a request with the method's deserializer before any handler runs. Left alone, a
`DecodeError` there (invalid UTF-8 in a string field, truncated or garbage bytes) reaches the
caller as UNKNOWN naming protobuf's exception class, and gRPC logs an ERROR with a traceback for
every such call, so one broken client can flood the log.

`MalformedRequests` is a server interceptor, so it covers every unary-request method the server
has (seqcast's, KServe's, health's) without touching their handlers: it wraps the method's
deserializer so that bytes that do not parse become a `Malformed` marker, and wraps the handler so
that a marker is answered INVALID_ARGUMENT ("the request is not a valid seqcast.v1.TranslateRequest:
String field had bad UTF-8") before the method runs. The refusals are counted in the request
metrics under the model "unknown", and logged as one warning per `log_interval_s` with their count.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from seqcast.server import metrics

log = logging.getLogger(__name__)


class Malformed:
    """Stands in for a request message whose bytes did not parse; `reason` says why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _reason(error: DecodeError) -> str:
    # protobuf says "Error parsing message with type 'seqcast.v1.TranslateRequest': <why>" (the
    # type and the why are absent from some of its messages).
    text = str(error)
    prefix = "Error parsing message with type "
    if text.startswith(prefix):
        kind, _, why = text[len(prefix):].partition(": ")
        return f"the request is not a valid {kind.strip(chr(39))}: {why or 'the bytes do not parse'}"
    return f"the request does not parse: {text or 'invalid protobuf bytes'}"


class _Throttled:
    """Logs the first refusal at once, then at most one line per interval with the count since."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._next = 0.0
        self._unlogged = 0

    def refused(self, method: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._unlogged += 1
            if now < self._next:
                return
            count, self._unlogged, self._next = self._unlogged, 0, now + self.interval_s
        log.warning("%d malformed request(s) answered INVALID_ARGUMENT (latest: %s: %s); next report in %gs at the earliest",
                    count, method, reason, self.interval_s)


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Answers requests that do not parse with INVALID_ARGUMENT, on every unary-request method."""

    def __init__(self, log_interval_s: float = 60.0) -> None:
        self._log = _Throttled(log_interval_s)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        method = details.method

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError as e:
                return Malformed(_reason(e))

        async def refuse(request: Malformed, context: grpc.aio.ServicerContext) -> None:
            self._log.refused(method, request.reason)
            metrics.observe_request("unknown", method.rsplit("/", 1)[-1], grpc.StatusCode.INVALID_ARGUMENT, 0.0)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)

        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, Malformed):
                    await refuse(request, context)
                result = inner_stream(request, context)
                if inspect.isasyncgen(result):
                    # aclosing: a caller that goes away closes the handler's generator at once.
                    async with aclosing(result) as messages:
                        async for message in messages:
                            yield message
                elif inspect.isawaitable(result):  # a handler that writes with context.write
                    await result

            return handler._replace(request_deserializer=deserialize, unary_stream=unary_stream)

        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await refuse(request, context)
            result = inner(request, context)
            return await result if inspect.isawaitable(result) else result

        return handler._replace(request_deserializer=deserialize, unary_unary=unary_unary)
