"""Ack batching by count and time, and what each handler outcome sends up."""

from __future__ import annotations

import asyncio

import pytest

from fanout_subscriber import DeadLetter, Overloaded, Retry
from fanout_subscriber._acks import AckBatch
from fanout_subscriber._lease import Keeper
from fanout_subscriber._pool import Job, Origin, Pool, outcome_of
from fanout_subscriber._proto import fanout_pb2 as pb
from fanout_subscriber.message import Message
from fanout_subscriber.stats import Counters


def test_a_full_batch_goes_out_at_once_and_a_partial_one_when_due() -> None:
    batch = AckBatch(3, 0.010)
    assert batch.due is None
    assert batch.push(1, 100.0) is None
    assert batch.due == pytest.approx(100.010), "due from the oldest ack"
    assert batch.push(2, 100.005) is None
    assert batch.due == pytest.approx(100.010)
    assert batch.push(3, 100.0) == [1, 2, 3]
    assert (batch.due, batch.take()) == (None, None)
    batch.push(4, 100.0)
    assert batch.take() == [4]
    assert batch.due is None


def test_handler_outcomes_map_to_dispositions() -> None:
    assert outcome_of(None, 1) is None, "returning acks"
    retry = outcome_of(ValueError("bad json"), 2)
    assert retry is not None
    assert (retry.ack_id, retry.disposition, retry.reason) == (2, pb.DISPOSITION_RETRY, "ValueError: bad json")
    assert not retry.HasField("retry_after")
    dead = outcome_of(DeadLetter("poison"), 3)
    assert dead is not None and (dead.disposition, dead.reason) == (pb.DISPOSITION_DEAD_LETTER, "poison")
    busy = outcome_of(Overloaded(), 4)
    assert busy is not None and busy.disposition == pb.DISPOSITION_OVERLOADED
    later = outcome_of(Retry("busy", after=1.5), 5)
    assert later is not None and later.disposition == pb.DISPOSITION_RETRY
    assert (later.retry_after.seconds, later.retry_after.nanos) == (1, 500_000_000)
    long = outcome_of(RuntimeError("x" * 5000), 6)
    assert long is not None and len(long.reason) <= 1024


def test_acks_are_batched_by_count_and_by_time_and_a_nack_flushes_them_first() -> None:
    async def scenario() -> list[pb.SubscribeRequest | None]:
        fail = {3}

        async def handler(m: Message) -> None:
            if m.ack_id in fail:
                raise DeadLetter("no")

        requests: asyncio.Queue[pb.SubscribeRequest | None] = asyncio.Queue()
        origin = Origin(requests, AckBatch(2, 0.05))
        pool = Pool(handler, 1, Counters())
        for ack_id in range(1, 5):
            delivery = pb.Delivery(ack_id=ack_id, topic="t", key=b"one-key", attempt=1)
            pool.submit(Job(Message.from_proto(delivery), origin, Keeper(0, 0, 0)))
        await pool.close(asyncio.get_running_loop().time() + 5)
        frames = []
        while not requests.empty():
            frames.append(requests.get_nowait())
        assert len(frames) == 2, "ack 4 waits for the interval"
        await asyncio.sleep(0.1)
        while not requests.empty():
            frames.append(requests.get_nowait())
        return frames

    frames = asyncio.run(scenario())
    kinds = [(f.WhichOneof("kind"), list(f.ack.ack_ids) if f.ack.ack_ids else f.nack.ack_id) for f in frames if f]
    assert kinds == [("ack", [1, 2]), ("nack", 3), ("ack", [4])]
