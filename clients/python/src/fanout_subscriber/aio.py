"""The asyncio subscriber, on grpcio's ``aio`` API: the core of the library.

Example::

    import asyncio, signal
    from fanout_subscriber import DeadLetter, Message, Settings
    from fanout_subscriber.aio import Subscriber

    async def handle(message: Message) -> None:
        if message.value is None:
            raise DeadLetter("an order without a body")   # never retried
        await save(message.value)                        # raising here is a retry; returning acks

    async def main() -> None:
        subscriber = Subscriber(Settings(route="orders", gateway_dns="fanout-gateway-headless.fanout:50051"))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, subscriber.stop)
        await subscriber.run(handle)                     # returns once drained

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from types import TracebackType
from typing import Any

import grpc

from . import _replicas
from ._connection import Connection, Exit, Shared
from ._pool import Handler, Pool
from ._proto import fanout_pb2 as pb
from ._replicas import Resolver
from .errors import SettingsError
from .settings import Settings, resolve
from .stats import Counters, Stats

__all__ = ["Handler", "Subscriber"]

logger = logging.getLogger("fanout_subscriber")

_STOP = ("stop",)


def _exited(
    events: asyncio.Queue[tuple[Any, ...]], replica: str, member: int, connection: Connection, task: asyncio.Task[Exit]
) -> None:
    """Tells the subscriber's loop that a replica's connection ended."""
    events.put_nowait(("exit", replica, member, connection, task))


class Subscriber:
    """Subscribes to one route on every replica of a gateway and runs a handler on what
    arrives.

    - One ``Subscribe`` stream per replica (``Settings.gateways``, or every address of
      ``Settings.gateway_dns``, re-resolved every ``dns_refresh`` seconds).
    - A broken stream is reopened with jittered exponential backoff; a status no retry can fix
      ends :meth:`run` with a :class:`~fanout_subscriber.Refused`.
    - ``concurrency`` handlers at once, one at a time per key; returning acks (batched),
      raising nacks (see :mod:`fanout_subscriber.errors`).
    - Deadlines of held deliveries are extended while their handler runs or waits.
    - :meth:`stop`, cancelling :meth:`run`, or leaving ``async with`` drains: ``Drain`` on every
      stream, what is in flight is handled and acked, nothing handled comes again.

    The settings are checked at once (:class:`~fanout_subscriber.SettingsError`).
    """

    def __init__(self, settings: Settings, *, resolver: Resolver | None = None) -> None:
        """A subscriber with ``settings``; ``resolver`` turns ``gateway_dns`` into addresses
        (default: the system's resolver)."""
        self._resolved = resolve(settings)
        self._settings = settings
        self._resolver: Resolver = resolver or _replicas.system_resolver
        self._counters = Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[tuple[Any, ...]] | None = None
        self._stop_requested = False
        self._task: asyncio.Task[None] | None = None
        self._background: asyncio.Task[None] | None = None
        self._connections: set[Connection] = set()
        self._shared: Shared | None = None

    @property
    def settings(self) -> Settings:
        """The settings it was made with."""
        return self._settings

    def stats(self) -> Stats:
        """The counters now (safe from any thread)."""
        return self._counters.snapshot()

    def stop(self) -> None:
        """Asks the subscriber to drain and stop; :meth:`run` returns once it has. Safe from
        any thread and from a signal handler; calling it before :meth:`run` makes ``run``
        return at once."""
        self._stop_requested = True
        self._post(_STOP)

    def add_credit(self, additional: int) -> None:
        """Raises every open stream's window by ``additional`` (a ``Credit``, capped by the
        route's ``max_in_flight``); streams opened later ask for the raised window in their
        Hello (unless the window is the route's default, ``max_in_flight=0``). Safe from any
        thread."""
        if additional < 1:
            raise ValueError("additional must be at least 1")
        self._post(("credit", additional))

    def _post(self, event: tuple[Any, ...]) -> None:
        loop, events = self._loop, self._events
        if loop is None or events is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            events.put_nowait(event)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
                loop.call_soon_threadsafe(events.put_nowait, event)

    async def run(self, handler: Handler) -> None:
        """Streams from every replica and runs ``handler`` (an ``async def`` taking a
        :class:`~fanout_subscriber.Message`; a plain function works but blocks the loop while
        it runs) until :meth:`stop` is called or this coroutine is cancelled, then drains:
        ``Drain`` on every stream, the handlers finish what is in flight (up to
        ``drain_timeout``), it is acked, and ``run`` returns (or re-raises the cancellation).

        Raises :class:`~fanout_subscriber.Refused` (:class:`~fanout_subscriber.RouteNotFound`,
        :class:`~fanout_subscriber.IdentityRefused`) as soon as a replica answers with a status
        no retry can fix, after draining the other streams; everything else (unreachable or
        restarting replicas) is retried with backoff for as long as it takes. A gateway that
        drains this subscriber unasked (``fanoutctl drain``) takes it out: every stream
        drains, none is opened again, and ``run`` waits for :meth:`stop`.
        """
        if self._task is not None:
            raise RuntimeError("a Subscriber runs once; make another")
        task = asyncio.ensure_future(self._run(handler))
        self._task = task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            logger.info("run() cancelled: draining")
            self.stop()
            try:
                await task
            except Exception as error:
                logger.warning("while draining after a cancellation: %s", error)
            raise

    def start(self, handler: Handler) -> asyncio.Task[None]:
        """Runs :meth:`run` in the background (for ``async with``); returns its task."""
        if self._background is not None:
            raise RuntimeError("a Subscriber runs once; make another")
        self._background = asyncio.ensure_future(self.run(handler))
        return self._background

    async def __aenter__(self) -> Subscriber:
        """``async with Subscriber(settings) as sub: sub.start(handler); ...``"""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Drains and waits for the background run; raises its error unless the block is
        already raising one."""
        self.stop()
        if self._background is None:
            return
        try:
            await self._background
        except Exception:
            if exc_type is None:
                raise
            logger.exception("the subscriber failed while the block raised")

    def _credentials(self) -> grpc.ChannelCredentials | None:
        tls = self._settings.tls
        if tls is None:
            return None

        def read(field: str, path: str | None) -> bytes | None:
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as error:
                raise SettingsError(f"tls.{field}", f"cannot read {path}: {error}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read("ca_file", tls.ca_file),
            private_key=read("key_file", tls.key_file),
            certificate_chain=read("cert_file", tls.cert_file),
        )

    def _options(self) -> list[tuple[str, str | int]]:
        s = self._settings
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            # A replica that vanished without closing its connections (a node lost) is noticed
            # within about 30 s instead of never.
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # Reconnects are this library's business (its backoff), not the channel's.
            ("grpc.enable_retries", 0),
        ]
        if s.tls is not None:
            server_name = s.tls.server_name
            if server_name is None and s.gateway_dns:
                # Replicas found through DNS are dialled by address; their certificate names
                # the Service.
                server_name = _replicas.split_host_port(_replicas.authority(s.gateway_dns))[0]
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
        return options

    async def _discover(self, events: asyncio.Queue[tuple[Any, ...]]) -> None:
        s = self._settings
        if not s.gateway_dns:
            for replica in self._resolved.replicas:
                events.put_nowait(("insert", replica))
            return
        name = _replicas.authority(s.gateway_dns)
        current: set[str] = set()
        while True:
            try:
                resolved = {_replicas.authority(a) for a in await self._resolver(name)}
            except Exception as error:  # a resolver's hiccup must not drop healthy streams
                logger.warning("cannot resolve the gateway's replicas (%s): %s; keeping the known ones", name, error)
            else:
                removed, added = _replicas.changes(current, resolved)
                for replica in removed:
                    events.put_nowait(("remove", replica))
                for replica in added:
                    events.put_nowait(("insert", replica))
                if not resolved and not current:
                    logger.warning("%s resolves to no address yet; resolving again in %.0f s", name, s.dns_refresh)
                current = resolved
            await asyncio.sleep(s.dns_refresh)

    async def _run(self, handler: Handler) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._loop, self._events = loop, events
        if self._stop_requested:
            return
        s = self._settings
        pool = Pool(handler, s.concurrency, self._counters)
        hello = pb.Hello()
        hello.CopyFrom(self._resolved.hello)
        shared = Shared(self._resolved, hello, pool, self._counters, self._credentials(), self._options())
        self._shared = shared
        pool.start()
        # Each replica's connection, by key: an id (a replica that leaves and comes back is a
        # new member), the connection and its task.
        members: dict[str, tuple[int, Connection]] = {}
        streams: set[asyncio.Task[Exit]] = set()
        next_id = 0
        taken_out = False
        error: BaseException | None = None
        discovery = loop.create_task(self._discover(events))
        try:
            while True:
                event = await events.get()
                kind = event[0]
                if kind == "stop":
                    logger.info("route %r: shutting down, draining every stream", s.route)
                    break
                if kind == "credit":
                    additional = event[1]
                    if hello.max_in_flight:
                        hello.max_in_flight = min(hello.max_in_flight + additional, 2**32 - 1)
                    for connection in self._connections:
                        if connection.origin is not None:
                            connection.origin.credit(additional)
                elif kind == "insert":
                    replica = event[1]
                    if taken_out:
                        logger.debug("%s: replica found; no stream: an operator drained this subscriber", replica)
                    elif replica not in members:
                        logger.info("%s: replica found; opening a stream", replica)
                        next_id += 1
                        connection = Connection(replica, shared)
                        members[replica] = (next_id, connection)
                        self._connections.add(connection)
                        task = loop.create_task(connection.run())
                        streams.add(task)
                        task.add_done_callback(functools.partial(_exited, events, replica, next_id, connection))
                elif kind == "remove":
                    member = members.pop(event[1], None)
                    if member is not None:
                        logger.info("%s: replica gone from discovery; draining its stream", event[1])
                        member[1].leave.set()
                elif kind == "exit":
                    _, replica, member_id, connection, task = event
                    streams.discard(task)
                    self._connections.discard(connection)
                    if replica in members and members[replica][0] == member_id:
                        del members[replica]
                    if task.cancelled():
                        continue
                    failure = task.exception()
                    if failure is not None:
                        logger.warning("subscription failed (%s); draining the other streams", failure)
                        error = failure
                        break
                    if task.result() is Exit.DRAINED_BY_GATEWAY:
                        self._counters.drained_by_gateway += 1
                        if not taken_out:
                            taken_out = True
                            # The operator meant the pod: leave the other replicas too (each
                            # drains what it holds), and wait for stop().
                            for _, other in members.values():
                                other.leave.set()
        finally:
            discovery.cancel()
            for connection in self._connections:
                connection.leave.set()
            # Every stream drains at once, each within the drain timeout.
            deadline = loop.time() + s.drain_timeout + 1.0
            if streams:
                done, pending = await asyncio.wait(streams, timeout=max(0.0, deadline - loop.time()))
                for task in done:
                    if error is None and not task.cancelled() and task.exception() is not None:
                        error = task.exception()
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.gather(discovery, return_exceptions=True)
            await pool.close(deadline)
            self._connections.clear()
            logger.info("route %r: stopped (%s)", s.route, self.stats())
        if error is not None:
            raise error
