"""The handler pool: at most ``concurrency`` handlers at once over every stream, one at a time
per key (see :mod:`._keyed`), each outcome sent straight back to the stream its delivery came
on, and the deadlines of held deliveries extended (see :mod:`._lease`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import duration_pb2

from ._acks import AckBatch
from ._keyed import KeyedQueue
from ._lease import MAX_EXTENSION, Durations, Keeper
from ._proto import fanout_pb2 as pb
from .errors import DeadLetter, Overloaded, Retry
from .message import Message
from .stats import Counters

logger = logging.getLogger("fanout_subscriber")

#: What a handler is: called with each message; returning (or its awaitable finishing) acks.
Handler = Callable[[Message], Awaitable[Any] | Any]

#: How often held deliveries are checked for a due extension (seconds).
LEASE_TICK = 0.1
#: The longest nack reason sent (the gateway bounds frames; a reason is for people).
MAX_REASON = 1024


def duration(seconds: float) -> duration_pb2.Duration:
    """``seconds`` as a protobuf Duration."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


class Origin:
    """The way back to one stream: its outcomes go up as batched acks, nacks, extends, credit
    and drain. Closed once the stream has ended: its deliveries' handles mean nothing on
    another stream, so queued ones are dropped unhandled (the gateway redelivers them) and
    late outcomes are discarded. Used on the event loop only."""

    def __init__(self, requests: asyncio.Queue[pb.SubscribeRequest | None], batch: AckBatch) -> None:
        self._requests = requests
        self._batch = batch
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def _send(self, request: pb.SubscribeRequest) -> None:
        if not self.closed:
            self._requests.put_nowait(request)

    def ack(self, ack_id: int) -> None:
        """Acks ``ack_id``: batched, sent when the batch is full or its interval is up."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        full = self._batch.push(ack_id, loop.time())
        if full is not None:
            self._cancel_timer()
            self._send(pb.SubscribeRequest(ack=pb.Ack(ack_ids=full)))
        elif self._timer is None:
            self._timer = loop.call_later(self._batch.interval, self.flush)

    def flush(self) -> None:
        """Sends the pending acks now."""
        self._cancel_timer()
        ids = self._batch.take()
        if ids:
            self._send(pb.SubscribeRequest(ack=pb.Ack(ack_ids=ids)))

    def nack(self, nack: pb.Nack) -> None:
        """Sends a nack, after the acks before it."""
        self.flush()
        self._send(pb.SubscribeRequest(nack=nack))

    def extend(self, ack_ids: list[int], seconds: float) -> None:
        """Moves the deadline of ``ack_ids`` to ``seconds`` from now (at most 10 minutes)."""
        extension = duration(min(seconds, MAX_EXTENSION))
        self._send(pb.SubscribeRequest(extend=pb.Extend(ack_ids=ack_ids, extension=extension)))

    def credit(self, additional: int) -> None:
        """Raises this stream's window by ``additional``."""
        self._send(pb.SubscribeRequest(credit=pb.Credit(additional=additional)))

    def drain(self) -> None:
        """Sends the pending acks, then ``Drain``."""
        self.flush()
        self._send(pb.SubscribeRequest(drain=pb.Drain()))

    def close(self) -> None:
        """The stream is over: nothing more is sent, and the request stream ends."""
        self._cancel_timer()
        if not self.closed:
            self.closed = True
            self._requests.put_nowait(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass(eq=False)
class Job:
    """One delivery on its way through the pool."""

    message: Message
    origin: Origin
    lease: Keeper
    key: Hashable | None = field(default=None)


def order_key(message: Message) -> Hashable | None:
    """What orders a delivery: its topic and Kafka key. Without a key it is unordered."""
    return None if message.key is None else (message.topic, message.key)


def outcome_of(error: BaseException | None, ack_id: int) -> pb.Nack | None:
    """The nack a handler's exception asks for (``None``: it returned, an ack)."""
    if error is None:
        return None
    if isinstance(error, DeadLetter):
        return pb.Nack(ack_id=ack_id, reason=error.reason[:MAX_REASON], disposition=pb.DISPOSITION_DEAD_LETTER)
    if isinstance(error, Overloaded):
        return pb.Nack(ack_id=ack_id, reason=error.reason[:MAX_REASON], disposition=pb.DISPOSITION_OVERLOADED)
    if isinstance(error, Retry):
        nack = pb.Nack(ack_id=ack_id, reason=error.reason[:MAX_REASON], disposition=pb.DISPOSITION_RETRY)
        if error.after is not None:
            nack.retry_after.CopyFrom(duration(max(0.0, error.after)))
        return nack
    reason = f"{type(error).__name__}: {error}"
    return pb.Nack(ack_id=ack_id, reason=reason[:MAX_REASON], disposition=pb.DISPOSITION_RETRY)


class Pool:
    """Runs the handler on what the streams submit. Lives on one event loop."""

    def __init__(self, handler: Handler, concurrency: int, counters: Counters) -> None:
        self._handler = handler
        self._concurrency = max(1, concurrency)
        self._counters = counters
        self._queue: KeyedQueue[Job] = KeyedQueue()
        self._running: set[Job] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._durations = Durations()
        self._idle = asyncio.Event()
        self._idle.set()
        self._lease_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts extending the deadlines of held deliveries."""
        self._lease_task = asyncio.get_running_loop().create_task(self._extend_loop())

    def submit(self, job: Job) -> None:
        """Queues a delivery behind its key's."""
        job.key = order_key(job.message)
        self._queue.push(job.key, job)
        self._idle.clear()
        self._fill()

    def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        while len(self._running) < self._concurrency:
            popped = self._queue.pop()
            if popped is None:
                break
            key, job = popped
            if job.origin.closed:
                self._counters.abandoned += 1
                if key is not None:
                    self._queue.finished(key)
                continue
            self._running.add(job)
            self._counters.running += 1
            task = loop.create_task(self._handle(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._running and self._queue.is_empty():
            self._idle.set()

    async def _handle(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        error: Exception | None = None
        try:
            try:
                result = self._handler(job.message)
                if inspect.isawaitable(result):
                    await result
            except Exception as raised:  # any failure of the handler is a nack, never a crash
                error = raised
            self._durations.record(loop.time() - started)
            nack = outcome_of(error, job.message.ack_id)
            if nack is None:
                self._counters.acked += 1
                job.origin.ack(job.message.ack_id)
            else:
                self._counters.nacked += 1
                if not isinstance(error, (DeadLetter, Overloaded, Retry)):
                    logger.warning(
                        "handler raised on %s/%d/%d (attempt %d); nacked for a retry",
                        job.message.topic,
                        job.message.partition,
                        job.message.offset,
                        job.message.attempt,
                        exc_info=error,
                    )
                job.origin.nack(nack)
        finally:
            self._running.discard(job)
            self._counters.running -= 1
            if job.key is not None:
                self._queue.finished(job.key)
            self._fill()

    async def _extend_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LEASE_TICK)
            self.extend_due(loop.time())

    def extend_due(self, now: float) -> None:
        """Sends the extensions due at ``now`` for held deliveries, running or queued, one
        ``Extend`` per stream and extension."""
        p99 = self._durations.p99()
        due: dict[tuple[Origin, float], list[int]] = {}

        def visit(job: Job) -> None:
            at = job.lease.due()
            if at is None or at > now or job.origin.closed:
                return
            extension = job.lease.extend(now, p99)
            if extension is not None:
                due.setdefault((job.origin, round(extension, 3)), []).append(job.message.ack_id)

        self._queue.for_each(visit)
        for job in self._running:
            visit(job)
        for (origin, extension), ack_ids in due.items():
            origin.extend(ack_ids, extension)

    async def close(self, deadline: float) -> None:
        """Waits (until the loop time ``deadline``) for the running handlers, then cancels
        what still runs; queued deliveries of ended streams are dropped."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            logger.warning("%d handler(s) still running at the drain deadline; cancelled", len(self._running))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)
