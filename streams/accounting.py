"""Where every query of a run went, read from the topics: answered, dead-lettered, in flight or lost.

A run that reports only what its driver saw cannot tell a slow worker from a lost record. This reads,
after the run, from offsets taken before it started:

* ``answered``: distinct query ids on ``auctions`` (whether or not the driver saw them in time);
* ``dead_lettered``: records on ``dead-letters`` whose source is ``queries``;
* ``backlog``: records on ``queries`` past the worker group's committed offsets (not yet taken);
* ``in_flight`` = the unanswered queries the backlog explains; ``lost`` = the rest (must be 0).

The committed offset lags what the agents have already answered by up to one commit interval, so the
backlog may count answered queries too; ``in_flight`` never counts more than are unanswered.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bidder.settings import Settings
from streams.kafka_config import aiokafka_admin_kwargs
from streams.tail import tail_consumer

__all__ = ["InputAccount", "QueryAccount", "TopicMarks", "account_queries", "group_backlog", "group_backlogs",
           "topic_marks"]

_TOPICS = ("queries", "auctions", "dead-letters")


@dataclass(frozen=True)
class TopicMarks:
    """End offsets of ``queries``, ``auctions`` and ``dead-letters`` before a run."""

    ends: dict[TopicPartition, int]


@dataclass(frozen=True)
class InputAccount:
    """Where the records sent to one input topic went: ``sent = handled + dead_lettered + in_flight + lost``
    (when nothing was handled twice; ``excess`` counts outputs beyond what was sent).

    >>> a = InputAccount.of("clicks", sent=100, handled=70, dead_lettered=5, backlog=20)
    >>> a.in_flight, a.lost, a.excess
    (20, 5, 0)
    """

    topic: str
    sent: int
    handled: int
    dead_lettered: int
    in_flight: int
    """unhandled records the group's backlog explains (not yet taken by the agent)"""
    lost: int
    """unhandled records past the group's committed offsets: neither handled nor dead-lettered"""
    excess: int
    """outputs beyond the records sent (a record handled twice without being recognised)"""
    backlog: int
    """records on the topic past the group's committed offsets"""

    @classmethod
    def of(cls, topic: str, *, sent: int, handled: int, dead_lettered: int, backlog: int) -> InputAccount:
        unaccounted = max(sent - handled - dead_lettered, 0)
        in_flight = min(unaccounted, max(backlog, 0))
        return cls(topic=topic, sent=sent, handled=handled, dead_lettered=dead_lettered, in_flight=in_flight,
                   lost=unaccounted - in_flight, excess=max(handled + dead_lettered - sent, 0), backlog=backlog)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QueryAccount:
    """Where the ``sent`` queries of a run went."""

    sent: int
    answered: int
    dead_lettered: int
    in_flight: int
    lost: int
    backlog: int
    """records on ``queries`` past the group's committed offsets at the end"""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def _ends(consumer: AIOKafkaConsumer, topics: tuple[str, ...]) -> dict[TopicPartition, int]:
    tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    return {tp: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}


async def topic_marks(settings: Settings, bootstrap: str) -> TopicMarks:
    consumer = await tail_consumer(settings, bootstrap, list(_TOPICS))
    try:
        return TopicMarks(await _ends(consumer, _TOPICS))
    finally:
        await consumer.stop()


async def group_backlogs(settings: Settings, bootstrap: str, *, group: str, topics: tuple[str, ...]
                         ) -> dict[str, int]:
    """Records on each of ``topics`` past ``group``'s committed offsets (all of a partition it never
    committed)."""
    admin = AIOKafkaAdminClient(**aiokafka_admin_kwargs(settings, bootstrap=bootstrap))
    await admin.start()
    consumer = await tail_consumer(settings, bootstrap, list(topics))
    try:
        committed = await admin.list_consumer_group_offsets(group)
        ends = await _ends(consumer, topics)
        out = dict.fromkeys(topics, 0)
        for tp, end in ends.items():
            done = committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0
            out[tp.topic] += max(end - done, 0)
        return out
    finally:
        await consumer.stop()
        await admin.close()


async def group_backlog(settings: Settings, bootstrap: str, *, group: str, topic: str) -> int:
    """Records on ``topic`` past ``group``'s committed offsets (all of a partition it never committed)."""
    return (await group_backlogs(settings, bootstrap, group=group, topics=(topic,)))[topic]


async def _read_between(consumer: AIOKafkaConsumer, start: dict[TopicPartition, int],
                        end: dict[TopicPartition, int], *, timeout_s: float = 30.0) -> list[Any]:
    """Every record of ``start``'s partitions from its start offset up to ``end`` (exclusive)."""
    consumer.assign(list(start))
    for tp, off in start.items():
        consumer.seek(tp, off)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for tp, records in (await consumer.getmany(timeout_ms=200, max_records=5000)).items():
            out.extend(r for r in records if r.offset < end.get(tp, 0))
        positions = [(await consumer.position(tp), end.get(tp, 0)) for tp in start]
        if all(pos >= e for pos, e in positions):
            break
    return out


async def account_queries(settings: Settings, bootstrap: str, *, marks: TopicMarks, sent: int,
                          group: str, ids: set[str] | None = None) -> QueryAccount:
    """Account for the ``sent`` queries produced after ``marks`` were taken (only those in ``ids``,
    when given: other producers may share the topics)."""
    consumer = await tail_consumer(settings, bootstrap, ["auctions", "dead-letters"])
    try:
        ends = await _ends(consumer, ("auctions", "dead-letters"))
        start = {tp: off for tp, off in marks.ends.items() if tp.topic in ("auctions", "dead-letters")}
        records = await _read_between(consumer, start, ends)
    finally:
        await consumer.stop()
    answered: set[str] = set()
    dead = 0
    for r in records:
        if r.topic == "auctions":
            qid = str(orjson.loads(r.value)["query_id"])
            if ids is None or qid in ids:
                answered.add(qid)
        elif r.key == b"queries" and (ids is None or _dead_key(r.value) in ids):
            dead += 1
    backlog = await group_backlog(settings, bootstrap, group=group, topic="queries")
    a = InputAccount.of("queries", sent=sent, handled=len(answered), dead_lettered=dead, backlog=backlog)
    return QueryAccount(sent=sent, answered=a.handled, dead_lettered=dead, in_flight=a.in_flight, lost=a.lost,
                        backlog=backlog)


def _dead_key(value: bytes | None) -> str | None:
    """The original record key of a dead letter (``streams/deadletter.py``)."""
    try:
        key = orjson.loads(value or b"null").get("key_b64")
        return None if key is None else base64.b64decode(key).decode()
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        return None


def account(settings: Settings, bootstrap: str, *, marks: TopicMarks, sent: int, group: str) -> QueryAccount:
    """:func:`account_queries` from synchronous code."""
    return asyncio.run(account_queries(settings, bootstrap, marks=marks, sent=sent, group=group))
