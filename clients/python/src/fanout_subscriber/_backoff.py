"""Jittered exponential backoff between reconnects (the shape of tower's
``ExponentialBackoff`` that fanout-client uses): the n-th delay's base is
``min(minimum * 2**n, maximum)``, and a random share of up to ``jitter`` of the base is added,
so that the streams of one process, and the pods of one Deployment, do not retry in step."""

from __future__ import annotations

import random


class Backoff:
    """Delays between the attempts of one replica's stream; :meth:`reset` once a stream has
    stayed up for the healthy period."""

    def __init__(self, minimum: float, maximum: float, jitter: float = 0.5, rng: random.Random | None = None) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("backoff: need 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._attempts = 0

    def base(self) -> float:
        """The next delay before jitter."""
        return min(self.minimum * 2.0 ** min(self._attempts, 64), self.maximum)

    def next(self) -> float:
        """The next delay in seconds: the base plus up to ``jitter`` of it."""
        base = self.base()
        self._attempts += 1
        return base + base * self.jitter * self._rng.random()

    def reset(self) -> None:
        """Starts again from the minimum."""
        self._attempts = 0
