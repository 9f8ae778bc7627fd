"""What a status that ends a stream means for the next attempt (as fanout-client's
``connection::verdict``)."""

from __future__ import annotations

import enum

import grpc


class Verdict(enum.Enum):
    """How a stream's ending status is handled."""

    #: The route, the hello or the peer is wrong, and every replica will say the same: the
    #: subscriber stops with a :class:`~fanout_subscriber.Refused`.
    FATAL = "fatal"
    #: The gateway does not (yet, or any more) accept this pod: in Kubernetes a pod that just
    #: started is refused until the gateway's watch has seen it running. Retried for the
    #: identity grace, then final.
    IDENTITY = "identity"
    #: A stopping replica (UNAVAILABLE), its stream limit (RESOURCE_EXHAUSTED), a broken
    #: connection, anything else: retried with backoff for as long as it takes.
    RETRY = "retry"


_FATAL = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED})
_IDENTITY = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})


def verdict(code: grpc.StatusCode) -> Verdict:
    """The verdict on a stream that ended with ``code``."""
    if code in _FATAL:
        return Verdict.FATAL
    if code in _IDENTITY:
        return Verdict.IDENTITY
    return Verdict.RETRY
