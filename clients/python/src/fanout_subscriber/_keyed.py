"""The order handlers run in: deliveries of one key one at a time, in arrival order; other
keys, and deliveries without a key, in parallel (as fanout-client's ``keyed``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class KeyedQueue(Generic[T]):
    """Jobs not yet running. A key is *busy* from the moment one of its jobs is ready until
    that job finishes; the key's later jobs wait behind it. ``None`` is no key: such jobs are
    ready at once."""

    def __init__(self) -> None:
        self._ready: deque[tuple[Hashable | None, T]] = deque()
        self._waiting: dict[Hashable, deque[T]] = {}

    def push(self, key: Hashable | None, job: T) -> None:
        """Queues ``job`` behind the jobs of ``key``."""
        if key is None:
            self._ready.append((None, job))
            return
        behind = self._waiting.get(key)
        if behind is None:
            self._waiting[key] = deque()
            self._ready.append((key, job))
        else:
            behind.append(job)

    def pop(self) -> tuple[Hashable | None, T] | None:
        """The next job that may start now, oldest first, with its key."""
        return self._ready.popleft() if self._ready else None

    def finished(self, key: Hashable) -> None:
        """The running job of ``key`` finished: the next of that key, if any, becomes ready."""
        behind = self._waiting.get(key)
        if behind is None:
            return
        if behind:
            self._ready.append((key, behind.popleft()))
        else:
            del self._waiting[key]

    def for_each(self, visit: Callable[[T], None]) -> None:
        """Calls ``visit`` on every queued job, ready or waiting behind its key."""
        for _, job in self._ready:
            visit(job)
        for behind in self._waiting.values():
            for job in behind:
                visit(job)

    def is_empty(self) -> bool:
        """Whether no job is queued and no key is busy."""
        return not self._ready and not self._waiting

    def __len__(self) -> int:
        return len(self._ready) + sum(len(b) for b in self._waiting.values())
