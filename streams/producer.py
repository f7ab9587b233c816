"""Publishing events: the small async API other services use, and ``bidder produce``.

This is the one async module in ``bidder/`` (the issue names ``streams.producer``); it holds no logic
beyond choosing the topic and key of an event and waiting for the broker's acknowledgement.
Producers are idempotent with ``acks=all`` so a retried send does not duplicate a record, except on
a broker that cannot do it (the embedded Tansu rejects aiokafka's InitProducerId v0): then
``idempotent=False`` and the event ids (``click_id``, ``order_id``...) keep the effects exactly-once.

Example::

    async with EventProducer(settings, bootstrap="127.0.0.1:9092") as producer:
        # a click on a winner of an outcome read from ``auctions``, its token copied
        await producer.send(Click.of_winner(outcome, outcome["winners"][0], click_id="c-1", user_id=5,
                                            ts=time.time()))
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from bidder.events import AuctionOutcome, Click, Listing, Purchase, Query, Shop, encode
from bidder.settings import Settings
from bidder.topics import TOPICS
from streams.kafka_config import aiokafka_producer_kwargs

__all__ = ["EventProducer", "key_of", "topic_of"]

Event = Query | Click | Purchase | Listing | Shop | AuctionOutcome

_TOPIC: dict[type[Any], str] = {Query: "queries", Click: "clicks", Purchase: "purchases", Listing: "listings",
                                 Shop: "shops", AuctionOutcome: "auctions"}
"""event type -> topic; its key comes from the one topic table, ``bidder.topics``"""


def topic_of(event: Event) -> str:
    """The topic an event belongs on."""
    return _TOPIC[type(event)]


def key_of(event: Event) -> bytes:
    """The record key of an event (see ``bidder.topics``)."""
    return TOPICS[_TOPIC[type(event)]].key_of(event)


class EventProducer:
    """An aiokafka producer that knows where each event goes."""

    def __init__(self, settings: Settings, *, bootstrap: str | None = None, idempotent: bool | None = None,
                 linger_ms: int | None = None) -> None:
        from aiokafka import AIOKafkaProducer

        kwargs = aiokafka_producer_kwargs(settings, bootstrap=bootstrap)
        if idempotent is None:
            idempotent = settings.kafka_bootstrap is not None or settings.broker_kind != "tansu"
        if linger_ms is not None:
            kwargs["linger_ms"] = linger_ms
        self._producer = AIOKafkaProducer(acks="all", enable_idempotence=idempotent, **kwargs)

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def send(self, event: Event) -> tuple[int, int]:
        """Publish one event; returns (partition, offset) once the broker acknowledged it."""
        return await self.send_raw(topic_of(event), key_of(event), encode(event))

    async def send_raw(self, topic: str, key: bytes | None, value: bytes | None, *,
                       partition: int | None = None) -> tuple[int, int]:
        """Publish raw bytes (``bidder produce`` uses it: malformed lines must reach the worker too); ``partition``
        overrides the key's."""
        meta = await self._producer.send_and_wait(topic, value=value, key=key, partition=partition)
        return int(meta.partition), int(meta.offset)

    async def send_nowait(self, topic: str, key: bytes | None, value: bytes | None) -> Any:
        """Queue a record; returns the future of its acknowledgement (for open-loop traffic)."""
        return await self._producer.send(topic, value=value, key=key)

    async def flush(self) -> None:
        await self._producer.flush()
