"""One replica's stream, kept open for as long as the replica is wanted (as fanout-client's
``connection``): open, hello, hand deliveries to the pool, batch the outcomes up as acks and
nacks; on any stream error reopen after a jittered exponential backoff, reset once a stream
has stayed up; on a status that no retry can fix, give up and report it. Asked to leave, it
drains: sends ``Drain``, keeps handling and acking what is in flight until the gateway closes
the stream (it does once nothing is in flight) or the drain deadline passes. A stream the
gateway ends with OK unasked was drained by an operator (``fanoutctl drain`` of this pod): it
is not reopened."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ._acks import AckBatch
from ._backoff import Backoff
from ._classify import Verdict, verdict
from ._lease import Keeper
from ._pool import Job, Origin, Pool
from ._proto import fanout_pb2 as pb
from ._proto import fanout_pb2_grpc as rpc
from .errors import SettingsError, SubscriberError, refusal
from .message import Message
from .settings import Resolved
from .stats import Counters

logger = logging.getLogger("fanout_subscriber")


class Exit(enum.Enum):
    """Why a replica's connection ended without an error."""

    #: We asked to leave (shutdown, or the replica left discovery).
    LEFT = "left"
    #: The gateway drained this subscriber unasked: an operator took the pod out of the route.
    DRAINED_BY_GATEWAY = "drained by the gateway"


@dataclass
class _Ended:
    """How one stream ended: ``kind`` is left, drained, lost, refused or invalid."""

    kind: str
    why: str = ""
    code: grpc.StatusCode | None = None
    details: str = ""
    error: SubscriberError | None = None


@dataclass
class Shared:
    """What every stream of a subscriber shares."""

    resolved: Resolved
    #: The Hello, its window raised by credits given since the start.
    hello: pb.Hello
    pool: Pool
    counters: Counters
    credentials: grpc.ChannelCredentials | None
    options: Sequence[tuple[str, str | int]]


async def _requests(queue: asyncio.Queue[pb.SubscribeRequest | None]) -> AsyncIterator[pb.SubscribeRequest]:
    """The client side of one stream: what is queued, until ``None``."""
    while True:
        item = await queue.get()
        if item is None:
            return
        yield item


def read_token(path: str) -> str:
    """The token in ``path`` as a metadata value; :class:`SettingsError` when the file holds
    no valid one (``OSError`` when it cannot be read)."""
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token or any(not (0x21 <= ord(c) <= 0x7E) for c in token):
        raise SettingsError("token_file", "the file does not hold a valid token (a projected token is base64url text)")
    return token


class Connection:
    """Keeps one replica's stream open until asked to leave (:attr:`leave`), drained by the
    gateway, or refused for good."""

    def __init__(self, replica: str, shared: Shared) -> None:
        self.replica = replica
        self.leave = asyncio.Event()
        #: The way to the stream open now, if one is.
        self.origin: Origin | None = None
        self._shared = shared

    async def run(self) -> Exit:
        """Streams until done; raises :class:`~fanout_subscriber.Refused` (or
        :class:`~fanout_subscriber.SettingsError`) when no retry can help."""
        s = self._shared.resolved.settings
        route = s.route
        loop = asyncio.get_running_loop()
        backoff = Backoff(s.backoff_min, s.backoff_max)
        attempts = 0
        denied_since: float | None = None
        while True:
            if self.leave.is_set():
                return Exit.LEFT
            opened: list[float] = []
            ended = await self._stream(opened)
            if opened:
                denied_since = None
            if ended.kind == "left":
                return Exit.LEFT
            if ended.kind == "drained":
                logger.warning(
                    "%s: the gateway drained this subscriber of route %r (an operator's `fanoutctl drain`); "
                    "not reconnecting until restarted",
                    self.replica,
                    route,
                )
                return Exit.DRAINED_BY_GATEWAY
            if ended.kind == "invalid":
                assert ended.error is not None
                raise ended.error
            if ended.kind == "refused":
                assert ended.code is not None
                now = loop.time()
                if denied_since is None:
                    denied_since = now
                if verdict(ended.code) is not Verdict.IDENTITY or now - denied_since >= s.identity_grace:
                    logger.error(
                        "%s: %s: %s (not retried)", self.replica, ended.code.name, ended.details or "(no message)"
                    )
                    raise refusal(self.replica, route, ended.code, ended.details)
                why = f"{ended.code.name}: {ended.details} (an identity the gateway may not have seen yet)"
            else:
                why = ended.why
            # Only a stream that was open and stayed up counts as healthy.
            if opened and loop.time() - opened[0] >= s.healthy_after:
                backoff.reset()
                attempts = 0
            delay = backoff.next()
            attempts += 1
            logger.warning(
                "%s: stream lost (%s); reconnect attempt %d in %d ms", self.replica, why, attempts, delay * 1000
            )
            try:
                await asyncio.wait_for(self.leave.wait(), delay)
                return Exit.LEFT
            except TimeoutError:
                self._shared.counters.reconnects += 1

    def _channel(self) -> grpc.aio.Channel:
        # A fresh channel per attempt: our backoff decides when to retry, not the channel's.
        shared = self._shared
        if shared.credentials is None:
            return grpc.aio.insecure_channel(self.replica, options=shared.options)
        return grpc.aio.secure_channel(self.replica, shared.credentials, options=shared.options)

    async def _stream(self, opened: list[float]) -> _Ended:
        """One stream, from hello to its end; ``opened`` gets the time the gateway accepted it."""
        shared = self._shared
        s = shared.resolved.settings
        loop = asyncio.get_running_loop()
        metadata: tuple[tuple[str, str], ...] | None = None
        if s.token_file is not None:
            # Read at every attempt: projected tokens are rotated by the kubelet.
            try:
                metadata = (("authorization", f"Bearer {read_token(s.token_file)}"),)
            except OSError as error:
                return _Ended("lost", why=f"cannot read the token file {s.token_file}: {error}")
            except SettingsError as error:
                return _Ended("invalid", error=error)
        requests: asyncio.Queue[pb.SubscribeRequest | None] = asyncio.Queue()
        hello = pb.Hello()
        hello.CopyFrom(shared.hello)
        requests.put_nowait(pb.SubscribeRequest(hello=hello))
        channel = self._channel()
        stub = rpc.FanoutStub(channel)  # type: ignore[no-untyped-call]  # generated, untyped
        call = stub.Subscribe(_requests(requests), metadata=metadata)
        origin = Origin(requests, AckBatch(shared.resolved.ack_batch, s.ack_interval))
        leaving = loop.create_task(self.leave.wait())
        headers = asyncio.ensure_future(call.initial_metadata())
        reader: asyncio.Task[None] | None = None
        try:
            await asyncio.wait({headers, leaving}, return_when=asyncio.FIRST_COMPLETED)
            if not headers.done():
                return _Ended("left")
            # A refusal comes as trailers only, which grpc reports as empty headers (and the
            # call ends with them, though call.done() may not say so yet); an accepted stream
            # has headers of its own (the server's date, at least). Failing that, the first
            # response proves it open.
            if not headers.cancelled() and headers.exception() is None and len(headers.result() or ()) > 0:
                if not call.done():
                    self._opened(opened)
            self.origin = origin
            reader = loop.create_task(self._read(call, origin, opened))
            drain_deadline: float | None = None
            while True:
                waiting: set[asyncio.Future[Any]] = {reader} if drain_deadline is not None else {reader, leaving}
                timeout = None if drain_deadline is None else max(0.0, drain_deadline - loop.time())
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    failure = reader.exception()
                    if failure is None:
                        # The gateway ends a stream with OK only once it was drained and nothing
                        # is in flight: by us, or (unasked) by an operator.
                        origin.flush()
                        return _Ended("left" if drain_deadline is not None else "drained")
                    if not isinstance(failure, grpc.aio.AioRpcError):
                        raise failure
                    code, details = failure.code(), failure.details() or ""
                    if drain_deadline is not None:
                        # Leaving anyway: a stopping replica or a terminating pod's identity
                        # ended it; what is unacked is redelivered.
                        logger.debug("%s: stream ended while draining: %s: %s", self.replica, code.name, details)
                        return _Ended("left")
                    if verdict(code) is not Verdict.RETRY:
                        return _Ended("refused", code=code, details=details)
                    return _Ended("lost", why=f"{code.name}: {details}", code=code, details=details)
                if leaving in done and drain_deadline is None:
                    logger.info("%s: draining the stream", self.replica)
                    drain_deadline = loop.time() + s.drain_timeout
                    origin.drain()
                    continue
                if not done:
                    origin.flush()
                    logger.warning(
                        "%s: drain deadline passed with deliveries in flight (%.0f s); the gateway redelivers them",
                        self.replica,
                        s.drain_timeout,
                    )
                    return _Ended("left")
        finally:
            if opened:
                shared.counters.streams -= 1
            origin.close()
            if self.origin is origin:
                self.origin = None
            for task in (reader, leaving, headers):
                if task is not None and not task.done():
                    task.cancel()
            call.cancel()
            await channel.close()

    def _opened(self, opened: list[float]) -> None:
        """Marks the stream accepted by the gateway (once)."""
        if not opened:
            opened.append(asyncio.get_running_loop().time())
            self._shared.counters.streams += 1
            logger.info("%s: stream open (route %r)", self.replica, self._shared.resolved.settings.route)

    async def _read(self, call: grpc.aio.StreamStreamCall, origin: Origin, opened: list[float]) -> None:
        """Hands every delivery of the stream to the pool; returns when the gateway ends the
        stream with OK, raises its status otherwise."""
        shared = self._shared
        maximum = shared.resolved.settings.max_lease_extension
        loop = asyncio.get_running_loop()
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            self._opened(opened)
            shared.counters.received += len(response.deliveries)
            received, timeout = loop.time(), response.ack_timeout_ms / 1000.0
            for delivery in response.deliveries:
                shared.pool.submit(Job(Message.from_proto(delivery), origin, Keeper(received, timeout, maximum)))
