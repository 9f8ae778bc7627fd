"""Acks batched by count and time: one ``Ack`` frame per ``maximum`` deliveries or per
``interval``, whichever comes first, so a busy stream spends few frames and a quiet one acks
promptly."""

from __future__ import annotations


class AckBatch:
    """The acks of one stream not yet sent."""

    def __init__(self, maximum: int, interval: float) -> None:
        self.maximum = max(1, maximum)
        self.interval = interval
        self._ids: list[int] = []
        self._due: float | None = None

    def push(self, ack_id: int, now: float) -> list[int] | None:
        """Adds an ack; returns the batch when it is full."""
        if not self._ids:
            self._due = now + self.interval
        self._ids.append(ack_id)
        if len(self._ids) >= self.maximum:
            return self.take()
        return None

    @property
    def due(self) -> float | None:
        """When the pending acks must go out (the oldest's time plus the interval), if any."""
        return self._due

    def take(self) -> list[int] | None:
        """The pending acks, if any."""
        self._due = None
        if not self._ids:
            return None
        ids, self._ids = self._ids, []
        return ids
