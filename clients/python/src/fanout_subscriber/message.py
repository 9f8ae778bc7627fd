"""What a handler receives: one delivery of a Kafka record."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from ._proto import fanout_pb2 as pb

__all__ = ["Message"]


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery of a Kafka record.

    Delivery is at-least-once: a message can come twice (a redelivery has ``attempt > 1``).
    Recognise it across redeliveries by ``(topic, partition, offset)``, or by
    ``idempotency_key`` on effectively-once routes.
    """

    #: The Kafka topic.
    topic: str
    #: The Kafka partition.
    partition: int
    #: The record's offset in its partition.
    offset: int
    #: The record's key; ``None`` when it has none (possibly ``b""`` otherwise).
    key: bytes | None
    #: The record's value; ``None`` for a tombstone (possibly ``b""`` otherwise).
    value: bytes | None
    #: The record's headers in their order, ``(name, value)``; a name may repeat, a value may
    #: be ``None``.
    headers: tuple[tuple[str, bytes | None], ...]
    #: The record's timestamp (UTC), when it has one.
    timestamp: datetime.datetime | None
    #: 1 for the first delivery, incremented on every redelivery.
    attempt: int
    #: This subscriber's cohort when the route splits by a label; ``""`` otherwise.
    cohort: str
    #: The message's idempotency key on effectively-once routes; ``""`` otherwise.
    idempotency_key: str
    #: Non-zero when an operator's replay (``fanoutctl replay``) sent it again.
    replay_id: int
    #: The delivery's handle on its stream (what the library acks it by).
    ack_id: int

    def header(self, name: str) -> bytes | None:
        """The value of the last header called ``name``, or ``None``."""
        for header_name, value in reversed(self.headers):
            if header_name == name:
                return value
        return None

    @classmethod
    def from_proto(cls, delivery: pb.Delivery) -> Message:
        """The message of a ``fanout.v1.Delivery``."""
        timestamp = None
        if delivery.HasField("timestamp"):
            timestamp = delivery.timestamp.ToDatetime(tzinfo=datetime.timezone.utc)
        return cls(
            topic=delivery.topic,
            partition=delivery.partition,
            offset=delivery.offset,
            key=delivery.key if delivery.HasField("key") else None,
            value=delivery.value if delivery.HasField("value") else None,
            headers=tuple((h.name, h.value if h.HasField("value") else None) for h in delivery.headers),
            timestamp=timestamp,
            attempt=delivery.attempt,
            cohort=delivery.cohort,
            idempotency_key=delivery.idempotency_key,
            replay_id=delivery.replay_id,
            ack_id=delivery.ack_id,
        )
