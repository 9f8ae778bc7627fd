"""The exceptions of fanout_subscriber.

Two families:

- What a handler raises to say what the gateway should do with a delivery instead of acking
  it: :class:`DeadLetter`, :class:`Overloaded` and :class:`Retry` (any other exception is a
  retry too).
- What ends a subscriber: :class:`SubscriberError` and its subclasses, raised by
  ``aio.Subscriber.run()`` and by ``StreamingPullFuture.result()``.
"""

from __future__ import annotations

import grpc

__all__ = [
    "DeadLetter",
    "IdentityRefused",
    "Overloaded",
    "Refused",
    "Retry",
    "RouteNotFound",
    "SettingsError",
    "SubscriberError",
]


class DeadLetter(Exception):
    """Raise from a handler to give up on a delivery: the gateway sends it to the route's
    dead-letter topic (``DISPOSITION_DEAD_LETTER``) with ``reason`` in its headers, and it is
    never retried. For a message that can never succeed (it does not parse, it names
    something that does not exist)."""

    def __init__(self, reason: str = "dead-lettered by the handler") -> None:
        super().__init__(reason)
        #: Why, as the gateway logs it and writes it into the dead letter's headers.
        self.reason: str = reason


class Overloaded(Exception):
    """Raise from a handler when the service cannot take more now (a saturated database):
    the delivery comes again after the route's backoff without using up an attempt
    (``DISPOSITION_OVERLOADED``), and on a route with ``window = "adaptive"`` the gateway
    sends this subscriber fewer at once."""

    def __init__(self, reason: str = "overloaded") -> None:
        super().__init__(reason)
        #: Why, as the gateway logs it.
        self.reason: str = reason


class Retry(Exception):
    """Raise from a handler to ask for another attempt (``DISPOSITION_RETRY``), after
    ``after`` seconds instead of the route's backoff when given (the gateway caps it at the
    route's ``retry.max_backoff_ms``). Any other exception a handler raises is a retry after
    the route's backoff, its text the reason."""

    def __init__(self, reason: str = "retry asked by the handler", after: float | None = None) -> None:
        super().__init__(reason)
        #: Why, as the gateway logs it.
        self.reason: str = reason
        #: Seconds before the next attempt, or ``None`` for the route's backoff.
        self.after: float | None = after


class SubscriberError(Exception):
    """Why a subscriber could not start, or stopped with an error."""


class SettingsError(SubscriberError, ValueError):
    """A setting is out of range or a file it names cannot be read."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid setting {field}: {reason}")
        #: The :class:`~fanout_subscriber.Settings` field at fault.
        self.field: str = field
        #: What a valid value is.
        self.reason: str = reason


def code_name(code: grpc.StatusCode) -> str:
    """A status code as gRPC documents it: ``NOT_FOUND``, ``PERMISSION_DENIED``."""
    return str(code.name)


class Refused(SubscriberError):
    """A gateway replica refused the subscription with a status no retry can fix
    (``INVALID_ARGUMENT``: a bad hello or frame; ``UNIMPLEMENTED``: not a gateway, or a proxy
    that does not route the call), or refused this subscriber's identity
    (``PERMISSION_DENIED``, ``UNAUTHENTICATED``) for longer than the identity grace.
    Subclasses name the common cases: :class:`RouteNotFound`, :class:`IdentityRefused`."""

    def __init__(self, replica: str, route: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(
            f"replica {replica} refused the subscription to route {route!r} ({code_name(code)}): {message}"
        )
        #: The replica's ``host:port``.
        self.replica: str = replica
        #: The route asked for.
        self.route: str = route
        #: The gRPC status code.
        self.code: grpc.StatusCode = code
        #: The gateway's explanation.
        self.message: str = message


class RouteNotFound(Refused):
    """The gateway has no such route (``NOT_FOUND``): fix the route's name or the gateway's
    config."""


class IdentityRefused(Refused):
    """The gateway does not accept this subscriber (``PERMISSION_DENIED`` or
    ``UNAUTHENTICATED``): its pod, labels, peer address or token do not match the route."""


def refusal(replica: str, route: str, code: grpc.StatusCode, message: str) -> Refused:
    """The :class:`Refused` (or the subclass naming the case) for a final status."""
    if code == grpc.StatusCode.NOT_FOUND:
        return RouteNotFound(replica, route, code, message)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return IdentityRefused(replica, route, code, message)
    return Refused(replica, route, code, message)
