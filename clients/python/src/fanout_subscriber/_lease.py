"""Lease extension (as fanout-client's ``lease``): while a delivery is held (its handler runs,
or it waits for one), the library moves its ack deadline before it passes with an
``Extend``, so a handler slower than the route's ``ack_timeout_ms`` is not redelivered to
while it runs, nor are the deliveries waiting behind it. Each extension is sized from how long
handlers recently took (their 99th percentile), at least the route's deadline and at most
:data:`MAX_EXTENSION`; extensions stop once the delivery has been held for the subscriber's
maximum, after which the gateway takes it back. Times are ``time.monotonic()`` seconds."""

from __future__ import annotations

import math
from collections import deque

#: The longest extension the contract allows at once (10 minutes); longer ones are cut to it.
MAX_EXTENSION = 600.0
#: How many recent handler durations the percentile is taken over.
RECENT = 512


class Keeper:
    """When one delivery's deadline needs moving, and by how much."""

    def __init__(self, received: float, timeout: float, maximum: float) -> None:
        """A delivery that arrived at ``received`` on a route whose deadline is ``timeout``
        seconds (0: none, nothing to extend), held at most ``maximum`` seconds (0: never
        extended; ``math.inf``: no maximum). The first extension is due halfway to the
        deadline, which leaves the other half for the ``Extend`` to reach the gateway."""
        self.timeout = timeout
        self.until: float | None = None if math.isinf(maximum) else received + maximum
        self.deadline = received + timeout
        self._next: float | None = received + timeout / 2 if timeout > 0 and maximum > 0 else None

    def due(self) -> float | None:
        """When the next extension is due; ``None`` when there is none to make."""
        return self._next

    def extend(self, now: float, recent_p99: float) -> float | None:
        """The extension (seconds) to send at ``now``, sized from ``recent_p99``; the next is
        then due halfway through it. ``None`` when an extension now would not reach past the
        deadline the gateway already has (an extension never shortens one): on a route whose
        deadline is longer than :data:`MAX_EXTENSION` the next try is due when it would, and
        once the subscriber's maximum is reached there is none."""
        wanted = min(max(recent_p99, self.timeout), MAX_EXTENSION)
        target = now + wanted if self.until is None else min(now + wanted, self.until)
        if target <= self.deadline:
            more = self.until is None or self.until > self.deadline
            self._next = max(self.deadline - wanted / 2, now) if more else None
            return None
        extension = target - now
        self.deadline = target
        self._next = now + extension / 2
        return extension


class Durations:
    """How long handlers took, the most recent :data:`RECENT` of them."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=RECENT)

    def record(self, took: float) -> None:
        """Adds one handler's duration in seconds."""
        self._recent.append(took)

    def p99(self) -> float:
        """The 99th percentile of the recent durations (0 before any handler finished)."""
        if not self._recent:
            return 0.0
        ordered = sorted(self._recent)
        return ordered[min(len(ordered) * 99 // 100, len(ordered) - 1)]
