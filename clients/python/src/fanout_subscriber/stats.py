"""Counters of one subscriber, readable while it runs (for a service's own metrics or logs,
and for tests that watch a subscriber from outside)."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Stats"]


@dataclass(frozen=True)
class Stats:
    """A subscriber's counters at one moment."""

    #: Deliveries received, on every stream (redeliveries included).
    received: int = 0
    #: Deliveries acked (the handler returned).
    acked: int = 0
    #: Deliveries nacked (the handler raised).
    nacked: int = 0
    #: Deliveries dropped unhandled because their stream ended first; the gateway redelivers
    #: them.
    abandoned: int = 0
    #: Streams reopened after an error or a replica's restart.
    reconnects: int = 0
    #: Streams open now (one per reachable replica).
    streams: int = 0
    #: Handlers running now.
    running: int = 0
    #: Streams the gateway drained without being asked (an operator's ``fanoutctl drain`` of
    #: this pod). After the first, the subscriber drains its other streams and opens no more.
    drained_by_gateway: int = 0


class Counters:
    """The live, mutable counters behind :class:`Stats` (changed on the event loop only)."""

    def __init__(self) -> None:
        self.received = 0
        self.acked = 0
        self.nacked = 0
        self.abandoned = 0
        self.reconnects = 0
        self.streams = 0
        self.running = 0
        self.drained_by_gateway = 0

    def snapshot(self) -> Stats:
        """The counters now."""
        return Stats(**{f.name: getattr(self, f.name) for f in fields(Stats)})
