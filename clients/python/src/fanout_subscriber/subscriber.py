"""The blocking subscriber, shaped like google-cloud-pubsub's ``SubscriberClient.subscribe``:
:meth:`Subscriber.subscribe` returns a :class:`StreamingPullFuture` at once, callbacks run on
a thread pool, and ``future.cancel()`` drains. Underneath, :class:`fanout_subscriber.aio.Subscriber`
runs on an event loop of its own thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from . import aio
from ._replicas import Resolver
from .message import Message
from .settings import Settings, resolve
from .stats import Stats

__all__ = ["StreamingPullFuture", "Subscriber"]

logger = logging.getLogger("fanout_subscriber")

#: A blocking callback: returning acks the message, raising nacks it.
Callback = Callable[[Message], Any]


class StreamingPullFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The running subscription of :meth:`Subscriber.subscribe`.

    :meth:`result` blocks until the subscription ends: ``None`` after :meth:`cancel` (a
    graceful drain), or raises what ended it (:class:`~fanout_subscriber.Refused`, ...).
    """

    def __init__(self, subscriber: aio.Subscriber) -> None:
        super().__init__()
        self._subscriber = subscriber
        self._cancel_requested = False

    def cancel(self) -> bool:
        """Starts a graceful drain and returns ``True`` at once (as google-cloud-pubsub's):
        ``Drain`` on every stream, the callbacks in flight finish and are acked, then the
        future resolves with ``None``; call :meth:`result` to wait for it."""
        self._cancel_requested = True
        self._subscriber.stop()
        return True

    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel_requested

    def running(self) -> bool:
        """Whether the subscription still runs."""
        return not self.done()

    def stats(self) -> Stats:
        """The subscriber's counters now."""
        return self._subscriber.stats()

    def add_credit(self, additional: int) -> None:
        """Raises every open stream's window by ``additional`` (see
        :meth:`fanout_subscriber.aio.Subscriber.add_credit`)."""
        self._subscriber.add_credit(additional)


class Subscriber:
    """Subscribes to a route with a blocking callback.

    Example::

        from fanout_subscriber import Settings, Subscriber

        def callback(message):
            print(message.value)        # returning acks; raising nacks for a retry

        subscriber = Subscriber(Settings(route="orders", gateways=["127.0.0.1:50051"]))
        future = subscriber.subscribe(callback)
        try:
            future.result()
        except KeyboardInterrupt:
            future.cancel()             # drain: what is in flight is handled and acked
            future.result()
    """

    def __init__(
        self,
        settings: Settings,
        *,
        executor: concurrent.futures.ThreadPoolExecutor | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        """A subscriber with ``settings`` (checked at once: :class:`~fanout_subscriber.SettingsError`).
        Callbacks run on ``executor``, by default a pool of ``settings.concurrency`` threads
        made per subscription; ``resolver`` turns ``gateway_dns`` into addresses."""
        resolve(settings)
        self._settings = settings
        self._executor = executor
        self._resolver = resolver
        self._futures: list[StreamingPullFuture] = []

    def subscribe(self, callback: Callback) -> StreamingPullFuture:
        """Starts subscribing in a background thread and returns at once. ``callback`` is
        called with each :class:`~fanout_subscriber.Message` on a thread of the pool, at most
        ``concurrency`` at once and one at a time per key."""
        core = aio.Subscriber(self._settings, resolver=self._resolver)
        future = StreamingPullFuture(core)
        own_executor = self._executor is None
        executor = self._executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=self._settings.concurrency, thread_name_prefix="fanout-callback"
        )
        ready = threading.Event()

        async def handler(message: Message) -> None:
            await asyncio.get_running_loop().run_in_executor(executor, callback, message)

        async def main() -> None:
            task = asyncio.ensure_future(core.run(handler))
            await asyncio.sleep(0)  # run() has registered its loop: stop() reaches it
            ready.set()
            await task

        def thread() -> None:
            try:
                asyncio.run(main())
            except BaseException as error:  # the future carries it to result()
                future.set_exception(error)
            else:
                future.set_result(None)
            finally:
                ready.set()
                if own_executor:
                    executor.shutdown(wait=False, cancel_futures=True)

        future.set_running_or_notify_cancel()
        threading.Thread(target=thread, name=f"fanout-subscriber-{self._settings.route}", daemon=True).start()
        ready.wait()
        self._futures.append(future)
        return future

    def close(self, timeout: float | None = None) -> None:
        """Cancels (drains) every subscription this subscriber started and waits for them to
        end (up to ``timeout`` seconds each); their errors stay on their futures."""
        for future in self._futures:
            future.cancel()
        for future in self._futures:
            try:
                future.exception(timeout=timeout)
            except concurrent.futures.TimeoutError:
                logger.warning("a subscription did not finish draining within %s s", timeout)

    def __enter__(self) -> Subscriber:
        """``with Subscriber(settings) as subscriber: ...``; leaving the block :meth:`close`\\ s it."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Drains every subscription (see :meth:`close`)."""
        self.close()
