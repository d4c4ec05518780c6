"""Domain errors of the request path. They know nothing of gRPC: each front end maps them to its
protocol's status in one table (`seqcast.server.service` for gRPC)."""

from __future__ import annotations


class ServingError(Exception):
    """A request the server answered with an error on purpose; the message is for the caller."""


class InvalidArgument(ServingError):
    """The request is malformed or outside the model's limits.

    `field` names the offending request field in the native API's terms ("texts[2]",
    "max_new_tokens", "series[0].values[5]", "horizon"), for front ends whose errors name fields
    in their own terms; None when no single field is at fault.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


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
