"""Lease extension: when Extend goes up for held deliveries, and by how much."""

from __future__ import annotations

import asyncio
import math

import pytest

from fanout_subscriber._acks import AckBatch
from fanout_subscriber._lease import MAX_EXTENSION, RECENT, Durations, Keeper
from fanout_subscriber._pool import Job, Origin, Pool
from fanout_subscriber._proto import fanout_pb2 as pb
from fanout_subscriber.message import Message
from fanout_subscriber.stats import Counters

T0 = 1000.0


def test_the_first_extension_is_due_halfway_to_the_deadline_and_sized_from_handlers() -> None:
    keeper = Keeper(T0, 10, 3600)
    assert keeper.due() == T0 + 5
    assert keeper.extend(T0 + 5, 2) == 10, "never shorter than the route's deadline"
    assert keeper.due() == T0 + 10
    assert keeper.extend(T0 + 10, 120) == 120, "as long as handlers recently took"
    assert keeper.due() == T0 + 70
    assert keeper.extend(T0 + 70, 7200) == MAX_EXTENSION, "at most ten minutes at once"


def test_extensions_stop_at_the_subscribers_maximum_and_never_shorten_a_deadline() -> None:
    keeper = Keeper(T0, 10, 25)
    assert keeper.extend(T0 + 5, 0) == 10
    assert keeper.due() == T0 + 10
    assert keeper.extend(T0 + 10, 0) == 10
    assert keeper.due() == T0 + 15
    assert keeper.extend(T0 + 15, 0) == 10, "up to the maximum, 25 s after it arrived"
    assert keeper.extend(T0 + 20, 0) is None, "then it is let go"
    assert keeper.due() is None

    assert Keeper(T0, 30, 10).extend(T0 + 15, 0) is None, "a maximum below the route's deadline changes nothing"
    long_route = Keeper(T0, 3600, 7200)
    assert long_route.extend(T0 + 1800, 0) is None, "ten minutes would shorten an hour's deadline"
    assert long_route.due() == T0 + 3300, "tried again when ten minutes reach past it"
    assert long_route.extend(T0 + 3300, 0) == MAX_EXTENSION
    assert long_route.due() == T0 + 3600
    assert Keeper(T0, 10, math.inf).extend(T0 + 5, 0) == 10, "no maximum at all"
    assert Keeper(T0, 0, 25).due() is None, "a route without a deadline"
    assert Keeper(T0, 10, 0).due() is None, "extension turned off"


def test_the_percentile_follows_the_recent_handlers() -> None:
    durations = Durations()
    assert durations.p99() == 0
    for ms in range(1, 101):
        durations.record(ms / 1000)
    assert durations.p99() == pytest.approx(0.100)
    for _ in range(RECENT):
        durations.record(0.005)
    assert durations.p99() == pytest.approx(0.005), "old ones age out"


def test_running_and_waiting_deliveries_are_extended_together_halfway_to_their_deadline() -> None:
    async def scenario() -> list[list[pb.SubscribeRequest | None]]:
        gate = asyncio.Event()

        async def handler(m: Message) -> None:
            await gate.wait()

        requests: asyncio.Queue[pb.SubscribeRequest | None] = asyncio.Queue()
        origin = Origin(requests, AckBatch(10, 0.001))
        pool = Pool(handler, 1, Counters())
        for ack_id in (1, 2):  # one runs, one waits behind it (one key)
            delivery = pb.Delivery(ack_id=ack_id, topic="t", key=b"k", attempt=1)
            pool.submit(Job(Message.from_proto(delivery), origin, Keeper(T0, 10, 3600)))
        await asyncio.sleep(0)
        rounds = []
        for now in (T0 + 4.9, T0 + 5.0, T0 + 9.9, T0 + 10.0):
            pool.extend_due(now)
            got = []
            while not requests.empty():
                got.append(requests.get_nowait())
            rounds.append(got)
        gate.set()
        await pool.close(asyncio.get_running_loop().time() + 5)
        return rounds

    rounds = asyncio.run(scenario())
    assert rounds[0] == [], "nothing before half the deadline"
    (first,) = rounds[1]
    assert first is not None and sorted(first.extend.ack_ids) == [1, 2], "the running one and the one waiting"
    assert first.extend.extension.seconds == 10
    assert rounds[2] == [], "the next one halfway through the extension"
    assert len(rounds[3]) == 1
