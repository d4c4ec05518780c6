"""Domain errors of the request path. They know nothing of gRPC: each front end maps them to its
protocol's status in one table (`seqcast.server.service` for gRPC)."""

from __future__ import annotations


class ServingError(Exception):
    """A request the server answered with an error on purpose; the message is for the caller."""


class InvalidArgument(ServingError):
    """The request is malformed or outside the model's limits."""


class ModelNotFound(ServingError):
    """No loaded model has the requested name."""


class Overloaded(ServingError):
    """The server cannot take the request now (queue full, shutting down); retrying later may work."""


class DeadlineExceeded(ServingError):
    """The request's deadline passed before decoding finished."""


class EngineFailure(ServingError):
    """The model's runtime failed on the request (an encoder or decoder call raised). The
    scheduler logs the traceback once; the caller gets this message only."""
