"""fanout_subscriber: the Python subscriber library of fanout-gateway.

A service subscribes to a route of the gateway and processes what it is sent; the library does
the rest of the contract (``proto/fanout/v1/fanout.proto``), as the Rust library
``fanout-client`` does: a stream to every gateway replica, reconnects with backoff, per-key
ordered handlers with batched acks, lease extension, and a drain on shutdown.

Blocking (a thread pool runs the callbacks)::

    from fanout_subscriber import Settings, Subscriber
    future = Subscriber(Settings(route="orders", gateways=["127.0.0.1:50051"])).subscribe(print)
    future.result()

asyncio: :class:`fanout_subscriber.aio.Subscriber`.
"""

from __future__ import annotations

import logging

from .errors import (
    DeadLetter,
    IdentityRefused,
    Overloaded,
    Refused,
    Retry,
    RouteNotFound,
    SettingsError,
    SubscriberError,
)
from .message import Message
from .settings import Settings, Tls
from .stats import Stats
from .subscriber import StreamingPullFuture, Subscriber

__all__ = [
    "DeadLetter",
    "IdentityRefused",
    "Message",
    "Overloaded",
    "Refused",
    "Retry",
    "RouteNotFound",
    "Settings",
    "SettingsError",
    "Stats",
    "StreamingPullFuture",
    "Subscriber",
    "SubscriberError",
    "Tls",
]

__version__ = "0.1.0"

logging.getLogger("fanout_subscriber").addHandler(logging.NullHandler())
