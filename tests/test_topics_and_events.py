"""Topics are created idempotently; every event type round-trips over the real broker."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from bidder.decoding import Limits, decode
from bidder.events import Click, Listing, Purchase, Query, Shop
from bidder.query.features import QueryContext
from bidder.settings import Settings
from bidder.topics import ALL_TOPICS, TOPICS
from streams.admin import create_topics
from streams.producer import EventProducer, key_of, topic_of
from tests.kafka_helpers import read_until


def test_topic_declarations() -> None:
    names = {t.name for t in ALL_TOPICS}
    assert names == {"queries", "listings", "shops", "clicks", "purchases", "auctions", "billing", "orders",
                     "impressions", "labels", "listing-history", "listing-stats", "shop-spend", "drift-alerts",
                     "calibration-alerts", "dead-letters"}
    compacted = {t.name for t in ALL_TOPICS if t.cleanup_policy == "compact"}
    assert compacted == {"listings", "shops", "listing-history", "listing-stats", "shop-spend"}
    # a shop's clicks, orders, ledger and attributed orders on one partition number: one worker owns them
    assert TOPICS["clicks"].key == TOPICS["purchases"].key == TOPICS["billing"].key == TOPICS["orders"].key == "shop_id"
    assert TOPICS["queries"].key == "query_id"  # a worker's own outcomes' label updates on its own partitions
    assert TOPICS["impressions"].key == TOPICS["labels"].key == "query_id"  # a query's example and updates together


def test_create_topics_is_idempotent(bootstrap: str, settings: Settings) -> None:
    again = asyncio.run(create_topics(settings, bootstrap=bootstrap))
    assert set(again.values()) == {"exists"}
    assert set(again) == {t.name for t in ALL_TOPICS}


def test_every_event_type_round_trips(bootstrap: str, settings: Settings) -> None:
    now = time.time()
    tag = f"rt-{time.time_ns()}"
    events = [
        Query(query_id=f"{tag}-q", ts=now, user_id=1, context=QueryContext("desktop", "category", 9, 3),
              text="lamp", listing_ids=np.array([999_000_001, 999_000_002]), relevance=np.array([0.5, 0.25])),
        Click(click_id=f"{tag}-c", query_id=f"{tag}-q", listing_id=999_000_001, shop_id=999_001, user_id=1,
              ts=now, slot=0, price=0.25, shown_at=now - 1, token="tok"),
        Purchase(order_id=f"{tag}-o", user_id=1, listing_id=999_000_001, shop_id=999_001, ts=now, amount=12.5),
        Listing(listing_id=999_000_001, shop_id=999_001, price=12.5, category=3, ts=now),
        Shop(shop_id=999_001, daily_budget=10.0, target_share=0.05, ts=now),
    ]

    async def send() -> None:
        async with EventProducer(settings, bootstrap=bootstrap) as p:
            for ev in events:
                await p.send(ev)

    asyncio.run(send())
    topics = sorted({topic_of(e) for e in events})
    want = {(topic_of(e), key_of(e)) for e in events}

    def seen(recs: list[tuple[str, object, bytes | None]]) -> bool:
        return want <= {(t, k) for t, _, k in recs}

    import orjson

    records = asyncio.run(read_until(settings, bootstrap, topics, seen))
    assert seen(records)
    limits = Limits()
    for ev in events:
        topic, key = topic_of(ev), key_of(ev)
        body = next(v for t, v, k in records if t == topic and k == key)
        got = decode(topic, orjson.dumps(body), now=time.time(), limits=limits)
        if isinstance(ev, Query):
            assert isinstance(got, Query)
            assert got.query_id == ev.query_id and got.listing_ids.tolist() == ev.listing_ids.tolist()
        else:
            assert got == ev
