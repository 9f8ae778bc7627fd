"""Per-key scheduling: the keyed queue, and the pool that runs handlers through it."""

from __future__ import annotations

import asyncio

from fanout_subscriber._acks import AckBatch
from fanout_subscriber._keyed import KeyedQueue
from fanout_subscriber._lease import Keeper
from fanout_subscriber._pool import Job, Origin, Pool
from fanout_subscriber._proto import fanout_pb2 as pb
from fanout_subscriber.message import Message
from fanout_subscriber.stats import Counters


def test_one_key_runs_one_at_a_time_in_arrival_order() -> None:
    q: KeyedQueue[int] = KeyedQueue()
    for job in (1, 2, 3):
        q.push("a", job)
    assert q.pop() == ("a", 1)
    assert q.pop() is None, "a's second waits for its first"
    q.finished("a")
    assert q.pop() == ("a", 2)
    assert q.pop() is None
    q.finished("a")
    assert q.pop() == ("a", 3)
    q.finished("a")
    assert q.is_empty()


def test_other_keys_and_keyless_jobs_do_not_wait() -> None:
    q: KeyedQueue[int] = KeyedQueue()
    q.push("a", 1)
    q.push("a", 2)
    q.push("b", 3)
    q.push(None, 4)
    q.push(None, 5)
    ready = []
    while (item := q.pop()) is not None:
        ready.append(item[1])
    assert ready == [1, 3, 4, 5]
    assert not q.is_empty(), "a's second still waits"
    seen: list[int] = []
    q.for_each(seen.append)
    assert seen == [2]


def message(ack_id: int, key: bytes | None, topic: str = "t") -> Message:
    return Message.from_proto(pb.Delivery(ack_id=ack_id, topic=topic, key=key, offset=ack_id, attempt=1))


def sent(requests: asyncio.Queue[pb.SubscribeRequest | None]) -> list[pb.SubscribeRequest | None]:
    out = []
    while not requests.empty():
        out.append(requests.get_nowait())
    return out


def test_the_pool_keeps_each_keys_order_and_runs_keys_in_parallel() -> None:
    async def scenario() -> tuple[dict[bytes, list[int]], int]:
        order: dict[bytes, list[int]] = {}
        running: set[bytes] = set()
        most = 0

        async def handler(m: Message) -> None:
            nonlocal most
            assert m.key is not None
            assert m.key not in running, "two deliveries of one key at once"
            running.add(m.key)
            most = max(most, len(running))
            # Later deliveries finish sooner: only the queue keeps them in order.
            await asyncio.sleep(0.002 * (40 - m.ack_id) / 40)
            order.setdefault(m.key, []).append(m.ack_id)
            running.discard(m.key)

        counters = Counters()
        pool = Pool(handler, 4, counters)
        requests: asyncio.Queue[pb.SubscribeRequest | None] = asyncio.Queue()
        origin = Origin(requests, AckBatch(1000, 0.001))
        for ack_id in range(40):
            pool.submit(Job(message(ack_id, b"k%d" % (ack_id % 5)), origin, Keeper(0, 0, 0)))
        await pool.close(asyncio.get_running_loop().time() + 10)
        assert counters.acked == 40
        return order, most

    order, most = asyncio.run(scenario())
    for key, ids in order.items():
        assert ids == sorted(ids), f"key {key!r} out of order: {ids}"
    assert sum(len(ids) for ids in order.values()) == 40
    assert most > 1, "different keys ran in parallel"


def test_a_closed_streams_queued_deliveries_are_dropped_not_handled() -> None:
    async def scenario() -> tuple[list[int], Counters]:
        handled: list[int] = []
        gate = asyncio.Event()

        async def handler(m: Message) -> None:
            await gate.wait()
            handled.append(m.ack_id)

        counters = Counters()
        pool = Pool(handler, 1, counters)
        requests: asyncio.Queue[pb.SubscribeRequest | None] = asyncio.Queue()
        origin = Origin(requests, AckBatch(10, 0.001))
        for ack_id in range(3):
            pool.submit(Job(message(ack_id, None), origin, Keeper(0, 0, 0)))
        await asyncio.sleep(0)
        origin.close()  # the stream ended while 0 ran and 1, 2 waited
        gate.set()
        await pool.close(asyncio.get_running_loop().time() + 5)
        assert sent(requests) == [None], "nothing is sent on a closed stream"
        return handled, counters

    handled, counters = asyncio.run(scenario())
    assert handled == [0]
    assert counters.abandoned == 2
