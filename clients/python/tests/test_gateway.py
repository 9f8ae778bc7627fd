"""The library against a real gateway: the demo (``fanout-tools demo``), route ``demo``, whose
messages are ``{"seq":N,"customer":"customer-K",...}`` keyed ``customer-K`` (500 keys).
Every subscriber here says ``track=stable``, the demo's cohort."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import threading
import time
from collections.abc import Callable

import grpc
import pytest

from conftest import Demo, wait_for
from fanout_subscriber import DeadLetter, Message, RouteNotFound, Settings, Subscriber
from fanout_subscriber import aio

Record = tuple[str, int, int]


def settings(demo: Demo, **overrides: object) -> Settings:
    values: dict[str, object] = {"route": "demo", "gateways": [demo.address], "labels": {"track": "stable"}}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def record(m: Message) -> Record:
    return (m.topic, m.partition, m.offset)


def test_every_message_is_handled_and_acked_and_nothing_is_lost(demo_gateway: Callable[..., Demo]) -> None:
    demo = demo_gateway(duration=4, rate=500)
    handled: collections.Counter[Record] = collections.Counter()
    lock = threading.Lock()

    def callback(m: Message) -> None:
        with lock:
            handled[record(m)] += 1

    future = Subscriber(settings(demo, concurrency=8)).subscribe(callback)
    report = demo.report()
    future.cancel()
    assert future.result(timeout=30) is None
    assert report["produced"] > 0, report
    assert (report["lost"], report["duplicates"], report["dead_lettered"]) == (0, 0, 0), report
    assert report["acked"] == report["produced"] == report["committed"], report
    assert len(handled) == report["produced"], "every produced record reached the handler"
    assert set(handled.values()) == {1}, "none twice"
    stats = future.stats()
    assert stats.acked == report["produced"] and stats.nacked == 0, stats


def test_an_unknown_route_raises_route_not_found_without_retrying(demo_gateway: Callable[..., Demo]) -> None:
    demo = demo_gateway(duration=30)
    future = Subscriber(settings(demo, route="no-such-route")).subscribe(lambda m: None)
    with pytest.raises(RouteNotFound) as raised:
        future.result(timeout=20)
    error = raised.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.route == "no-such-route" and error.replica == demo.address
    assert "no-such-route" in error.message, error.message
    assert future.stats().reconnects == 0, "a status no retry fixes is not retried"

    async def asyncio_run() -> None:
        await aio.Subscriber(settings(demo, route="no-such-route")).run(lambda m: None)

    with pytest.raises(RouteNotFound):
        asyncio.run(asyncio.wait_for(asyncio_run(), 20))


def test_a_handler_that_raises_gets_a_redelivery_and_dead_letters_are_not_retried(
    demo_gateway: Callable[..., Demo],
) -> None:
    demo = demo_gateway(duration=3, rate=200)
    lock = threading.Lock()
    attempts: dict[Record, list[int]] = collections.defaultdict(list)
    failing: set[Record] = set()
    dead: set[Record] = set()

    def callback(m: Message) -> None:
        r = record(m)
        with lock:
            attempts[r].append(m.attempt)
            if m.attempt == 1 and len(failing) < 3 and r not in dead:
                failing.add(r)
            elif len(dead) < 2 and r not in failing and r not in dead:
                dead.add(r)
                raise DeadLetter("this one never works")
            elif r in dead:
                raise AssertionError("a dead letter came back")
        if r in failing and m.attempt == 1:
            raise RuntimeError("the first attempt fails")

    future = Subscriber(settings(demo, concurrency=4)).subscribe(callback)
    report = demo.report()
    future.cancel()
    future.result(timeout=30)
    assert len(failing) == 3 and len(dead) == 2
    for r in failing:
        assert attempts[r][0] == 1 and max(attempts[r]) > 1, f"{r} was delivered again: {attempts[r]}"
    for r in dead:
        assert attempts[r] == [1], f"{r} was dead-lettered, not retried: {attempts[r]}"
    assert report["dead_lettered"] == 2, report
    assert report["lost"] == 0 and report["duplicates"] >= 3, report
    assert future.stats().nacked == 5, future.stats()


def test_a_cancelled_subscription_drains_and_nothing_handled_comes_again(demo_gateway: Callable[..., Demo]) -> None:
    demo = demo_gateway(duration=60, rate=1000)
    lock = threading.Lock()
    runs: list[collections.Counter[Record]] = []

    def recorder() -> Callable[[Message], None]:
        seen: collections.Counter[Record] = collections.Counter()
        runs.append(seen)

        def callback(m: Message) -> None:
            time.sleep(random.uniform(0, 0.004))  # keep some in flight at the cancel
            with lock:
                seen[record(m)] += 1

        return callback

    # 1: the blocking subscriber, cancelled (a drain).
    future = Subscriber(settings(demo, concurrency=8)).subscribe(recorder())
    wait_for(lambda: len(runs[0]) >= 300, 30, "300 messages handled", demo.output)
    future.cancel()
    assert future.result(timeout=30) is None, "cancel drains and the future resolves"
    first = future.stats()
    assert first.acked == sum(runs[0].values()), f"everything handled was acked: {first}"
    assert first.abandoned == 0 and first.streams == 0, first

    # 2: the asyncio subscriber, its task cancelled (a drain too).
    async def run_cancelled() -> aio.Subscriber:
        subscriber = aio.Subscriber(settings(demo, concurrency=8))
        callback = recorder()

        async def handler(m: Message) -> None:
            await asyncio.sleep(random.uniform(0, 0.004))
            callback(m)

        task = asyncio.ensure_future(subscriber.run(handler))
        while len(runs[1]) < 300:
            await asyncio.sleep(0.05)
            assert not task.done(), task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return subscriber

    second = asyncio.run(asyncio.wait_for(run_cancelled(), 60)).stats()
    assert second.acked == sum(runs[1].values()) and second.abandoned == 0, second

    # 3: one more subscriber: what the first two handled was acked, so it never comes again.
    future = Subscriber(settings(demo, concurrency=8)).subscribe(recorder())
    wait_for(lambda: len(runs[2]) >= 300, 30, "300 more messages handled", demo.output)
    future.cancel()
    future.result(timeout=30)
    for n, seen in enumerate(runs):
        twice = [r for r, count in seen.items() if count > 1]
        assert not twice, f"run {n} handled {twice[:5]} twice"
    again = runs[0].keys() & runs[1].keys()
    assert not again, f"the second run got {len(again)} the first handled, e.g. {sorted(again)[:5]}"
    again = (runs[0].keys() | runs[1].keys()) & runs[2].keys()
    assert not again, f"the third run got {len(again)} handled before, e.g. {sorted(again)[:5]}"


def test_each_key_is_handled_in_order_one_at_a_time_while_keys_run_in_parallel(
    demo_gateway: Callable[..., Demo],
) -> None:
    demo = demo_gateway(duration=60, rate=1000)
    lock = threading.Lock()
    offsets: dict[str, list[int]] = collections.defaultdict(list)
    busy: set[str] = set()
    overlaps: list[str] = []
    most = 0

    def callback(m: Message) -> None:
        nonlocal most
        key = json.loads(m.value or b"{}")["customer"]
        assert m.key is not None and m.key.decode() == key
        with lock:
            if key in busy:
                overlaps.append(key)
            busy.add(key)
            most = max(most, len(busy))
        # One key in 50 is slow: the key's next deliveries come up while it runs (they would
        # start, and finish first, but for the library's per-key order).
        time.sleep(0.05 if int(key.rsplit("-", 1)[1]) % 50 == 0 else random.uniform(0, 0.001))
        with lock:
            busy.discard(key)
            offsets[key].append(m.offset)

    # A backlog first, and a window of 1000 (the route's cap): with 500 keys, each key then has
    # deliveries waiting behind its running one, which only the library's order holds back.
    wait_for(lambda: demo.produced() >= 2500, 60, "a backlog of 2500 messages", demo.output)
    future = Subscriber(settings(demo, concurrency=16, max_in_flight=1000)).subscribe(callback)
    wait_for(lambda: sum(len(o) for o in offsets.values()) >= 4000, 60, "4000 messages handled", demo.output)
    future.cancel()
    future.result(timeout=30)
    assert not overlaps, f"keys handled twice at once: {overlaps[:5]}"
    for key, seen in offsets.items():
        assert seen == sorted(seen) and len(set(seen)) == len(seen), f"{key} out of order: {seen}"
    assert most > 1, "different keys ran in parallel"


def test_replicas_found_through_dns_are_followed(demo_gateway: Callable[..., Demo]) -> None:
    demo = demo_gateway(duration=60, rate=500)
    answer: list[str] = [demo.address]
    handled = 0

    async def resolver(name: str) -> list[str]:
        assert name == "fanout-gateway-headless.test:50051"
        return list(answer)

    async def scenario() -> None:
        nonlocal handled

        async def handler(m: Message) -> None:
            nonlocal handled
            handled += 1

        subscriber = aio.Subscriber(
            settings(demo, gateways=(), gateway_dns="fanout-gateway-headless.test:50051", dns_refresh=0.2),
            resolver=resolver,
        )
        task = asyncio.ensure_future(subscriber.run(handler))

        async def until(condition: Callable[[], bool], what: str) -> None:
            for _ in range(600):
                if condition():
                    return
                assert not task.done(), task
                await asyncio.sleep(0.05)
            pytest.fail(f"timed out waiting for {what}: {subscriber.stats()}\n{demo.output()}")

        await until(lambda: subscriber.stats().streams == 1 and handled > 0, "a stream to the resolved replica")
        answer.clear()
        await until(lambda: subscriber.stats().streams == 0, "the stream to a replica gone from DNS to end")
        before = handled
        answer.append(demo.address)
        await until(lambda: subscriber.stats().streams == 1 and handled > before, "the replica back in DNS")
        subscriber.stop()
        await asyncio.wait_for(task, 30)
        assert subscriber.stats().reconnects == 0, subscriber.stats()

    asyncio.run(scenario())


def test_a_subscriber_the_gateway_drains_unasked_is_not_reopened(demo_gateway: Callable[..., Demo]) -> None:
    demo = demo_gateway(duration=60, rate=500)
    handled = 0

    def callback(m: Message) -> None:
        nonlocal handled
        handled += 1

    future = Subscriber(settings(demo, name="python-drained")).subscribe(callback)
    wait_for(lambda: handled > 0, 30, "deliveries", demo.output)
    demo.fanoutctl("drain", "demo", "python-drained")  # an operator takes the pod out
    wait_for(lambda: future.stats().drained_by_gateway == 1, 30, "the gateway's drain", demo.output)
    time.sleep(1.0)  # long enough for a reconnect, which must not come
    stats = future.stats()
    assert (stats.streams, stats.reconnects, stats.abandoned) == (0, 0, 0), stats
    assert stats.acked == stats.received, f"what it held was handled and acked: {stats}"
    assert not future.done(), "it stays out and waits for its own shutdown"
    future.cancel()
    assert future.result(timeout=30) is None
