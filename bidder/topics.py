"""Every Kafka topic the bidder reads or writes, declared once.

Money is owned per shop: ``clicks``, ``purchases``, the ``billing`` ledger and ``orders`` are keyed by ``shop_id`` and
have the same partition count, so one partition (one worker: Faust assigns partitions of equal number together)
owns a shop's budget, its clicks and the attribution of its orders. ``labels`` is keyed like ``queries`` (by
``query_id``): the updates of a worker's own auction outcomes are on its own partition numbers.
``listings`` and ``shops`` are compacted: the latest record per key is the catalog. ``auctions`` keeps a
week so clicks and purchases can be joined; ``impressions``, ``labels`` and ``dead-letters`` keep a month.
The online training data is two topics: ``impressions`` (one large record per auction outcome: every
impression with its feature vector, a provisional negative) and ``labels`` (the small updates that correct
them when a click or purchase arrives), so readers of the updates (every worker's replica, the aggregators)
never fetch the examples.

>>> TOPICS["clicks"].key
'shop_id'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["ALL_TOPICS", "TOPICS", "TopicSpec", "topic_specs"]

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: ``partitions=None`` means the deployment's ``topic_partitions`` setting."""

    name: str
    key: str
    """event field the record key holds"""
    cleanup_policy: Literal["delete", "compact"]
    retention_ms: int
    """-1 keeps records forever (compacted topics)"""
    partitions: int | None = None
    doc: str = ""

    def key_of(self, source: object) -> bytes:
        """The record key for ``source`` (an event, or a record as a mapping): its field named ``key``.

        >>> TOPICS["billing"].key_of({"shop_id": 7, "amount": 0.25})
        b'7'
        """
        value = source[self.key] if isinstance(source, Mapping) else getattr(source, self.key)
        return str(value).encode()

    def configs(self) -> dict[str, str]:
        """Topic configs as the Kafka admin API takes them."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


ALL_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("queries", "query_id", "delete", 1 * DAY_MS, doc="searches with ~600 candidates"),
    TopicSpec("listings", "listing_id", "compact", -1, doc="catalog: price, category, shop"),
    TopicSpec("shops", "shop_id", "compact", -1, doc="daily budget and target share"),
    TopicSpec("clicks", "shop_id", "delete", 7 * DAY_MS, doc="ad clicks, charged once by click_id"),
    TopicSpec("purchases", "shop_id", "delete", 7 * DAY_MS,
              doc="orders, attributed to the buyer's last click; keyed by shop like clicks, so the worker that decides "
                  "a shop's clicks attributes its orders"),
    TopicSpec("auctions", "query_id", "delete", 7 * DAY_MS, doc="auction outcomes: 24 winners, prices"),
    TopicSpec("billing", "shop_id", "delete", 30 * DAY_MS,
              doc="the ledger: one line per click (charged / unbilled / duplicate)"),
    TopicSpec("orders", "shop_id", "delete", 30 * DAY_MS,
              doc="orders attributed to a click, one record each, partitioned like purchases: what the attribute "
                  "agent of a partition rebuilds to attribute an order once"),
    TopicSpec("shop-spend", "partition", "compact", -1,
              doc="each billing partition's spend per shop today, published by the bill agent that owns it (the "
                  "latest record of a partition holds all of its shops): every worker's auto-bidder paces with it"),
    TopicSpec("impressions", "query_id", "delete", 30 * DAY_MS,
              doc="online training examples: per auction outcome its impressions with their features, provisional "
                  "negatives"),
    TopicSpec("labels", "query_id", "delete", 30 * DAY_MS,
              doc="online label updates: a click or a purchase correcting an impression"),
    TopicSpec("listing-history", "listing_id", "compact", -1,
              doc="each listing's rolling counters folded before this deployment's records began"),
    TopicSpec("listing-stats", "batch_key", "compact", -1,
              doc="rolling counters aggregated once: each source partition's changed listings per interval and its "
                  "checkpoints, columnar (key topic:partition:d<ring slot>.<part> or :c<parts>.<part>; "
                  "bidder/replica/aggregation.py, streams/aggregator.py), read by every worker for gather"),
    TopicSpec("drift-alerts", "feature", "delete", 30 * DAY_MS, partitions=1, doc="feature drift episodes"),
    TopicSpec("calibration-alerts", "target", "delete", 30 * DAY_MS, partitions=1,
              doc="a model version's calibration ratio left (or came back into) its bounds"),
    TopicSpec("dead-letters", "source_topic", "delete", 30 * DAY_MS, partitions=1,
              doc="rejected events with the reason and the original bytes"),
)
TOPICS: dict[str, TopicSpec] = {t.name: t for t in ALL_TOPICS}


def topic_specs(*, default_partitions: int) -> list[tuple[TopicSpec, int]]:
    """Each topic with its resolved partition count."""
    return [(t, t.partitions or default_partitions) for t in ALL_TOPICS]
