"""Domain errors of the request path. They know nothing of gRPC: each front end maps them to its
protocol's status in one table (`seqcast.server.service` for gRPC)."""

from __future__ import annotations

# Longest message a caller gets: a default gRPC client refuses more than 8 KiB of metadata, and a
# status message travels as metadata, so an echo of a huge input would turn the answer into
# RESOURCE_EXHAUSTED on the caller's side.
MAX_MESSAGE_CHARS = 1000
# Longest echo of one input value in a message (`shown`).
MAX_SHOWN_CHARS = 64


def shown(value: object) -> str:
    """`value` as a message quotes it: its repr, cut to MAX_SHOWN_CHARS with its full length said."""
    text = repr(value)
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    size = f"{len(value)} characters" if isinstance(value, (str, bytes)) else f"{len(text)} characters as text"
    return f"{text[:MAX_SHOWN_CHARS]}... ({size})"


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + f"... (message cut at {MAX_MESSAGE_CHARS} characters)"


class ServingError(Exception):
    """A request the server answered with an error on purpose; the message is for the caller,
    bounded to MAX_MESSAGE_CHARS whatever it quotes."""

    def __init__(self, message: str) -> None:
        super().__init__(_bounded(message))


class InvalidArgument(ServingError):
    """The request is malformed or outside the model's limits.

    `field` names the offending request field in the native API's terms ("texts[2]",
    "max_new_tokens", "series[0].values[5]", "horizon"), for front ends whose errors name fields
    in their own terms; None when no single field is at fault.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = None if field is None else field[:MAX_SHOWN_CHARS]


class Unsupported(ServingError):
    """A valid request the model cannot serve as it is (alignments from a bundle without that
    output): the same request succeeds once the model is rebuilt, so retrying as it is won't help."""


class ModelNotFound(ServingError):
    """No loaded model has the requested name."""


class Overloaded(ServingError):
    """The server cannot take the request now (queue full, shutting down); retrying later may work."""


class DeadlineExceeded(ServingError):
    """The request's deadline passed before decoding finished."""


class EngineFailure(ServingError):
    """The model's runtime failed on the request (an encoder or decoder call raised). The
    scheduler logs the traceback once; the caller gets this message only."""
