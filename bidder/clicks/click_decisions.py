"""Which ledger line a click gets, decided for a batch of clicks in order: pure, no I/O.

The bill agent (``streams/agents.py``) reads a batch of clicks of its partitions, makes sure its view is
caught up (the partition's ledger, the auctions the clicks name), and hands each click to
:meth:`ClickBatch.decide` in order; it writes the lines that come back, and dead-letters the rejections
with their reasons. A click is

* rejected ``unknown_auction`` when no outcome of its query is known, ``not_a_winner`` when its listing
  did not win that auction, ``click_after_window`` when it came more than ``click_window_s`` after the
  auction, ``shop_mismatch`` when it names another shop than the auction's winner;
* otherwise decided by :meth:`bidder.clicks.billing.Ledger.decide` at the auction's price, against the shop's
  daily budget less the spend of this batch's earlier clicks (not yet in the ledger's fold: the lines
  are written, acknowledged and folded after the whole batch is decided);
* a ``duplicate`` when the same click id was already decided earlier in this batch (a resend).

>>> from bidder.labels.auction_log import AuctionLog
>>> from bidder.clicks.billing import Ledger
>>> from bidder.query.catalog import Catalog
>>> from bidder.events import Click, Winner
>>> log = AuctionLog(window_s=60.0)
>>> log.add({"query_id": "q1", "ts": 100.0, "winners": [
...     {"slot": 0, "listing_id": 5, "shop_id": 7, "price": 0.3, "pctr": 0.02, "pcvr": 0.1}]})
True
>>> cat = Catalog()
>>> cat.upsert_shop(7, daily_budget=0.5, target_share=0.1)
>>> batch = ClickBatch(auctions=log, catalog=cat, ledger=Ledger(), click_window_s=30.0)
>>> c = Click(click_id="c1", query_id="q1", listing_id=5, shop_id=7, user_id=1, ts=101.0)
>>> [batch.decide(c).entry.status, batch.decide(c).entry.status]   # the resend within the batch
['charged', 'duplicate']
>>> batch.decide(Click(click_id="c2", query_id="q1", listing_id=5, shop_id=7, user_id=1, ts=102.0)).entry.amount
0.2
>>> batch.decide(Click(click_id="c3", query_id="q1", listing_id=6, shop_id=7, user_id=1, ts=102.0)).reason
'not_a_winner'
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bidder.clicks.billing import Ledger, LedgerEntry, day_of
from bidder.decoding import Rejection
from bidder.events import Click, Winner
from bidder.labels.auction_log import AuctionLog
from bidder.query.catalog import Catalog

__all__ = ["ClickBatch", "ClickDecision"]


@dataclass(frozen=True, slots=True)
class ClickDecision:
    """A click's ledger line and the auction slot it was charged for."""

    click: Click
    ad: Winner
    entry: LedgerEntry


@dataclass
class ClickBatch:
    """Decides the clicks of one batch in order; see the module docstring."""

    auctions: AuctionLog
    catalog: Catalog
    ledger: Ledger
    click_window_s: float
    _pending: dict[tuple[int, int], float] = field(default_factory=dict)
    """(shop, day) -> spend decided in this batch, not yet folded into ``ledger``"""
    _decided: set[str] = field(default_factory=set)

    def decide(self, click: Click) -> ClickDecision | Rejection:
        """The ledger line of ``click`` (counted against the batch from now on), or why it has none."""
        ad = self.auctions.find(click.query_id, click.listing_id)
        if ad is None:
            if self.auctions.knows(click.query_id):
                return Rejection("not_a_winner", f"listing {click.listing_id} in query {click.query_id!r}")
            return Rejection("unknown_auction", f"no auction outcome for query {click.query_id!r} in the last "
                                                f"{self.click_window_s:.0f}s")
        shown_at = self.auctions.auction_ts(click.query_id)
        if click.ts - shown_at > self.click_window_s:
            return Rejection("click_after_window", f"click at {click.ts:.3f} is {click.ts - shown_at:.0f}s after its "
                                                   f"auction (window {self.click_window_s:.0f}s)")
        if ad.shop_id != click.shop_id:
            return Rejection("shop_mismatch", f"click names shop {click.shop_id}, the auction had shop {ad.shop_id}")
        shop_row = self.catalog.shop_row_of(click.shop_id)
        key = (click.shop_id, day_of(click.ts))
        pending = self._pending.get(key, 0.0)
        entry = self.ledger.decide(
            click_id=click.click_id, shop_id=click.shop_id, listing_id=click.listing_id,
            query_id=click.query_id, user_id=click.user_id, slot=ad.slot, ts=click.ts, price=ad.price,
            budget=float(self.catalog.daily_budget[shop_row]) - pending)
        entry = replace(entry, spend_after=entry.spend_after + pending)
        if entry.click_id in self._decided and entry.status != "duplicate":  # resent within this batch
            entry = replace(entry, status="duplicate", amount=0.0, spend_after=entry.spend_after - entry.amount)
        self._pending[key] = pending + entry.amount
        self._decided.add(entry.click_id)
        return ClickDecision(click, ad, entry)
