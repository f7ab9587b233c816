"""What every worker knows: the fold of the replicated topics.

A worker reads two kinds of topics (``streams/replicator.py``):

* **every partition** of the catalog (``listings``, ``shops``) and of what is published aggregated once:
  ``listing-stats`` and ``listing-history`` (the rolling features) and ``shop-spend`` (every shop's spend
  today, :mod:`bidder.clicks.shop_spend`). What these hold grows with the catalog and the number of shops, and
  their records come at most once per publish interval per source partition, whatever the traffic;
* **its own partitions** (:data:`OWN_TOPICS`, the partition numbers the worker group assigned it: Faust assigns
  equal numbers of ``queries``, ``clicks`` and ``purchases`` together): ``billing`` (the exact ledger of the
  shops whose clicks it decides, and their clicks by buyer, which the shops' orders are attributed to),
  ``orders`` (the orders its attribute agent attributed: a redelivered purchase is attributed once) and
  ``labels`` (the clicks and conversions of the auction outcomes it wrote: calibration; ``labels`` is keyed
  like ``queries``).

No worker reads another worker's raw records, so what a worker's replica takes in does not grow with the
other workers' traffic.

**Rolling features** come one of two ways (``features``):

* ``"copy"`` (a worker): from ``listing-stats``, the snapshots the aggregators publish after folding each
  record once (:mod:`bidder.replica.aggregation`), kept in a :class:`~bidder.replica.feature_copy.FeatureCopy`
  whose ``stats`` is :attr:`BidderState.stats`. ``listing-history`` joins it as one more source.
* ``"fold"``: counted here from the raw records of every partition (``auctions``, ``billing``, ``labels``), one
  process seeing them all: the reference the aggregated copy is tested against (``tests/test_aggregation.py``).

Folding is idempotent where topics can repeat themselves (a redelivered query yields a second
outcome with the same ``query_id``; a redelivered click a ``duplicate`` ledger line; a redelivered
purchase a second update with the same ``order_id``): repeats change nothing.

The billing agent of a partition applies its own ledger lines as soon as the broker acknowledges
them (``apply_own_ledger``), so the next click on that shop sees them without waiting for the
replica; the replica then skips lines below ``ledger_applied[partition]``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal

import numpy as np
import orjson

from bidder.clicks.billing import Ledger, LedgerEntry
from bidder.clicks.shop_spend import SPEND_TOPIC, PublishedSpend, ShopSpend, SpendRecord
from bidder.decoding import Limits, Rejection, decode
from bidder.events import Listing, Shop
from bidder.labels.attribution import IMPRESSIONS_PREFIX, ClickIndex
from bidder.labels.auction_log import AuctionLog
from bidder.query.catalog import Catalog
from bidder.query.rolling import RollingStats
from bidder.replica.aggregation import ListingSnapshot, RecentKeys, SnapshotBatch
from bidder.replica.feature_copy import FeatureCopy
from bidder.replica.history import HISTORY_TOPIC, merge_record

__all__ = ["GLOBAL_TOPICS", "ORDERS_TOPIC", "OWN_TOPICS", "REPLICATED_TOPICS", "SNAPSHOT_TOPIC", "BidderState",
           "FeatureSource"]

SNAPSHOT_TOPIC = "listing-stats"
ORDERS_TOPIC = "orders"
GLOBAL_TOPICS: tuple[str, ...] = ("listings", "shops", HISTORY_TOPIC, SNAPSHOT_TOPIC, SPEND_TOPIC)
"""read from every partition by every worker"""
OWN_TOPICS: tuple[str, ...] = ("billing", ORDERS_TOPIC, "labels")
"""read by a worker for its own partition numbers only (the ``"fold"`` reference reads them all)"""
REPLICATED_TOPICS: tuple[str, ...] = (*GLOBAL_TOPICS, "auctions", *OWN_TOPICS)
FeatureSource = Literal["copy", "fold"]


class BidderState:
    """Catalog, rolling stats, ledger, recent auctions and clicks: one worker's view of the world."""

    def __init__(
        self,
        *,
        half_life_s: float,
        click_window_s: float,
        attribution_window_s: float,
        limits: Limits,
        features: FeatureSource = "fold",
    ) -> None:
        self.limits = limits
        self.catalog = Catalog()
        self.features: FeatureCopy | None = FeatureCopy(half_life_s=half_life_s) if features == "copy" else None
        """the aggregated copy (``features="copy"``), whose ``stats`` is :attr:`stats`; None: folded here"""
        self.stats = RollingStats(half_life_s=half_life_s) if self.features is None else self.features.stats
        self._snapshots: list[ListingSnapshot] = []
        """``listing-history`` records taken since the last :meth:`flush`"""
        self._batches: list[SnapshotBatch] = []
        """``listing-stats`` records read since the last :meth:`flush`"""
        self.ledger = Ledger()
        self.auctions = AuctionLog(window_s=click_window_s, conversion_window_s=attribution_window_s,
                                   retain_s=2 * click_window_s)
        self.clicks = ClickIndex(window_s=attribution_window_s)
        """decided clicks by buyer (the ledger's fold): what the shops' orders are attributed to"""
        self.published_spend = PublishedSpend()
        """every partition's spend per shop today, as its owner published it (``shop-spend``)"""
        self.spend = ShopSpend(self.ledger, self.published_spend)
        """what the auto-bidder paces with: the own ledger and the published spend, the larger"""
        self.ledger_applied: dict[int, int] = {}
        self.billing_shops: dict[int, set[int]] = {}
        """shops per ``billing`` partition, as their ledger lines were folded"""
        self.spend_changed: dict[int, int] = {}
        """``billing`` partitions whose spend changed since the last :meth:`take_spend_changes`, with the latest day"""
        self._orders = RecentKeys(1_000_000)
        """orders attributed (``orders``, and this worker's own writes): a repeated purchase is not attributed again"""
        self._converted = RecentKeys(1_000_000)
        """orders whose conversion update was folded from ``labels`` (calibration counts each once)"""
        self.counts: Counter[str] = Counter()
        self.history_from = float("inf")
        """event time of the earliest auction outcome folded, or the start of a ``listing-history`` (inf:
        none): how far back the rolling features reach"""
        self._history_waiting: dict[int, tuple[dict[str, Any], int, int]] = {}
        """``listing-history`` records (partition, offset) of listings the catalog does not hold yet"""

    @property
    def replicated_topics(self) -> tuple[str, ...]:
        """The topics this state folds: ``listing-stats`` only for the aggregated copy, ``auctions`` only for
        the fold (the copy's features come from the aggregator, clicks are priced by their tokens and
        calibration matures the outcomes this worker wrote itself: :meth:`own_outcome`)."""
        drop = "auctions" if self.features is not None else SNAPSHOT_TOPIC
        return tuple(t for t in REPLICATED_TOPICS if t != drop)

    @property
    def own_topics(self) -> tuple[str, ...]:
        """The topics read for the worker's own partition numbers only (none for the fold: it reads them all)."""
        return OWN_TOPICS if self.features is not None else ()

    # -- folding -----------------------------------------------------------------------------------
    def apply(self, topic: str, partition: int, offset: int, value: bytes | None, *, now: float,
              repaired: bool = False) -> None:
        """Fold one record of a replicated topic. Invalid records are counted, never raised.

        ``repaired``: a record a fetch skipped, read again after later ones (``streams.gap_repair``);
        a ledger line is folded even below ``ledger_applied`` (``Ledger.apply`` ignores a click id
        already decided) and the mark is left where it is."""
        try:
            if topic in ("listings", "shops"):
                self._apply_catalog(topic, value, now)
            elif topic == SNAPSHOT_TOPIC:
                self._apply_snapshot(value)
            elif topic == HISTORY_TOPIC:
                self._apply_history(orjson.loads(value or b"null"), partition, offset)
            elif topic == "auctions":
                self._apply_outcome(orjson.loads(value or b"null"))
            elif topic == "billing":
                mark = self.ledger_applied.get(partition, 0)
                if offset >= mark or repaired:
                    self._apply_ledger(LedgerEntry.from_dict(orjson.loads(value or b"null")), partition)
                    self.ledger_applied[partition] = max(mark, offset + 1)
            elif topic == SPEND_TOPIC:
                self._apply_spend(value)
            elif topic == ORDERS_TOPIC:
                self._apply_order(orjson.loads(value or b"null"))
            elif topic == "labels" and value is not None and not value.startswith(IMPRESSIONS_PREFIX):
                # label updates only; an example (on labels before impressions had a topic) is skipped unparsed
                self._apply_label(orjson.loads(value))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, OverflowError):
            # anything a producer could write there (a JSON list on labels, a string on auctions)
            self.counts[f"{topic}_unreadable"] += 1

    def _apply_catalog(self, topic: str, value: bytes | None, now: float) -> None:
        # catalog records may be old (compacted topics keep them forever): no age limit here
        ev = decode(topic, value, now=now, limits=self.limits.for_catalog())
        if isinstance(ev, Rejection):
            self.counts[f"{topic}_rejected"] += 1
        elif isinstance(ev, Listing):
            if ev.active:
                self.catalog.upsert_listing(ev.listing_id, shop_id=ev.shop_id, price=ev.price,
                                            category=ev.category)
            else:
                self.catalog.remove_listing(ev.listing_id)
            waiting = self._history_waiting.pop(ev.listing_id, None)
            if waiting is not None and self.catalog.listing_row(ev.listing_id) is not None:
                self._apply_history(*waiting)
            self.counts["listings"] += 1
        elif isinstance(ev, Shop):
            self.catalog.upsert_shop(ev.shop_id, daily_budget=ev.daily_budget, target_share=ev.target_share)
            self.counts["shops"] += 1

    def _apply_history(self, record: dict[str, Any], partition: int, offset: int) -> None:
        if float(record["half_life_s"]) != self.stats.half_life_s:
            self.counts["listing-history_other_half_life"] += 1
            return
        listing_id = int(record["listing_id"])
        row = self.catalog.listing_row(listing_id)
        if row is None:
            self._history_waiting[listing_id] = (record, partition, offset)
            return
        if self.features is None:
            merge_record(self.stats, row, record)
        else:  # one more source of the copy: a listing's history is its record with the highest offset
            self._snapshots.append(_history_snapshot(record, partition, offset))
        self.history_from = min(self.history_from, float(record["history_from"]))
        self.counts["listing-history"] += 1

    def _apply_snapshot(self, value: bytes | None) -> None:
        if self.features is None:
            return
        if value is None:  # a tombstone: a compacted topic may carry them; nothing to take
            self.counts["listing-stats_tombstones"] += 1
            return
        self._batches.append(SnapshotBatch.decode(value))
        self.counts["listing-stats"] += 1

    def flush(self) -> None:
        """Take the snapshots read since the last call into the copy (once per fetch round: the copy
        recombines the rows they touch in one pass)."""
        if self.features is None:
            return
        (snapshots, self._snapshots), (batches, self._batches) = (self._snapshots, []), (self._batches, [])
        self.features.apply(snapshots, self.catalog, batches)  # with none: the waiting ones the catalog now knows

    def _apply_outcome(self, outcome: dict[str, Any]) -> None:
        if not self.auctions.add(outcome):
            self.counts["auctions_repeated"] += 1
            return
        self.counts["auctions"] += 1
        self.history_from = min(self.history_from, float(outcome["ts"]))
        if self.features is None:
            ids = np.fromiter((int(w["listing_id"]) for w in outcome["winners"]), np.int64)
            rows, known = self.catalog.rows(ids)
            self.stats.record(rows[known], kind="impressions", now=float(outcome["ts"]))

    def own_outcome(self, outcome: dict[str, Any]) -> None:
        """An outcome this worker wrote (a worker folding ``auctions`` folds it there too: a repeat, ignored).

        With the aggregated copy no worker reads every partition of ``auctions`` any more: each matures the
        outcomes it wrote for calibration (the clicks and conversions of every partition still mark them,
        from ``billing`` and ``labels``), and they tell how far back the features reach when nothing older
        is known (:meth:`history_begins`)."""
        if self.features is None:
            return  # folded from the topic, with everyone's
        if self.auctions.add(outcome):
            self.counts["auctions"] += 1
            self.history_from = min(self.history_from, float(outcome["ts"]))

    def history_begins(self, ts: float) -> None:
        """The earliest outcome still on ``auctions`` (read once at the start): the aggregated features reach
        back at least that far."""
        self.history_from = min(self.history_from, ts)

    def _apply_ledger(self, entry: LedgerEntry, partition: int) -> None:
        if not self.ledger.apply(entry):
            return
        self.billing_shops.setdefault(partition, set()).add(entry.shop_id)
        self.spend_changed[partition] = max(self.spend_changed.get(partition, entry.day), entry.day)
        row = self.catalog.listing_row(entry.listing_id)
        if row is not None and self.features is None:
            self.stats.record(np.array([row]), kind="clicks", now=entry.ts)
            if entry.amount > 0:
                self.stats.record(np.array([row]), kind="spend", now=entry.ts, amount=entry.amount)
        self.clicks.add(user_id=entry.user_id, listing_id=entry.listing_id, ts=entry.ts,
                        click_id=entry.click_id, query_id=entry.query_id, slot=entry.slot)

    def _apply_spend(self, value: bytes | None) -> None:
        if value is None:  # a tombstone: a compacted topic may carry them
            self.counts[f"{SPEND_TOPIC}_tombstones"] += 1
            return
        self.published_spend.apply(SpendRecord.decode(value))
        self.counts[SPEND_TOPIC] += 1

    def _apply_order(self, order: dict[str, Any]) -> None:
        if order.get("type") != "order_attributed":
            raise ValueError("not an order_attributed record")
        if self._orders.add(str(order["order_id"])):
            self.counts["orders"] += 1

    def _apply_label(self, label: dict[str, Any]) -> None:
        """A label update: the clicks and conversions that mature this worker's own outcomes (calibration) and,
        for the fold, the conversions of the rolling features."""
        if label.get("type") != "label_update":
            return
        query_id, listing_id = str(label["query_id"]), int(label["listing_id"])
        self.counts["label_updates"] += 1
        if label.get("clicked"):
            self.auctions.mark_clicked(query_id, listing_id)
        if not label.get("converted"):
            return
        if not self._converted.add(str(label["order_id"])):
            self.counts["conversions_repeated"] += 1
            return
        self.counts["conversions"] += 1
        self.auctions.mark_converted(query_id, listing_id)
        row = self.catalog.listing_row(listing_id)
        if row is not None and self.features is None:
            self.stats.record(np.array([row]), kind="conversions", now=float(label["ts"]))

    def apply_own_ledger(self, entry: LedgerEntry, *, partition: int, offset: int | None) -> None:
        """The billing agent's own acknowledged write (offset from the broker's ack).

        Always folded (``Ledger.apply`` ignores a click id already decided): a broker that lost its
        tail reuses offsets (noida-db loses the last acknowledged records on restart, see
        docs/reliability.md), and skipping an own write by offset left its spend out -> overspend.
        """
        self._apply_ledger(entry, partition)
        if offset is not None:
            self.ledger_acked(partition, offset)

    def own_order(self, order_id: str) -> None:
        """An order this worker's attribute agent attributed (its ``orders`` record acknowledged)."""
        self._orders.add(order_id)

    def take_spend_changes(self, partitions: set[int]) -> dict[int, int]:
        """The ``billing`` partitions among ``partitions`` (those this worker owns) whose spend changed since the
        last call, with the latest day changed; forgets them (the others stay until owned or dropped)."""
        taken = {p: d for p, d in self.spend_changed.items() if p in partitions}
        for p in taken:
            del self.spend_changed[p]
        return taken

    def ledger_acked(self, partition: int, offset: int) -> None:
        """The broker acknowledged an own ledger line at ``offset`` (the replica may skip up to it)."""
        self.ledger_applied[partition] = max(self.ledger_applied.get(partition, 0), offset + 1)

    def order_attributed(self, order_id: str) -> bool:
        return order_id in self._orders


def _history_snapshot(record: dict[str, Any], partition: int, offset: int) -> ListingSnapshot:
    """A ``listing-history`` record as a source of the aggregated copy."""
    last_imp, last_clk = record.get("last_impression"), record.get("last_click")
    return ListingSnapshot(
        HISTORY_TOPIC, partition, int(record["listing_id"]), float(record["impressions"]), float(record["clicks"]),
        float(record["conversions"]), float(record["spend"]), float(record["at"]),
        -math.inf if last_imp is None else float(last_imp), -math.inf if last_clk is None else float(last_clk),
        offset, float(record["half_life_s"]), offset + 1, offset)
