"""Which ledger line a click gets, decided for a batch of clicks in order: pure, no I/O.

The bill agent (``streams/agents.py``) reads a batch of clicks of its partitions, makes sure its view of
their shops' ledger is caught up, and hands each click to :meth:`ClickBatch.decide` in order; it writes the
lines that come back, and dead-letters the rejections with their reasons. A click is

* rejected ``bad_token`` when its token does not sign its query, slot, listing, shop, price and auction
  time (``bidder/clicks/click_token.py``: a forged price, another shop, a listing that did not win, a
  query that never ran), ``click_after_window`` when it came more than ``click_window_s`` after the
  auction;
* otherwise decided by :meth:`bidder.clicks.billing.Ledger.decide` at the price its token vouches for,
  against the shop's daily budget less the spend of this batch's earlier clicks (not yet in the ledger's
  fold: the lines are written, acknowledged and folded after the whole batch is decided);
* a ``duplicate`` when the same click id was already decided earlier in this batch (a resend).

No auction is looked up: the token carries what the auction decided, so the bill agent of a shop needs no
copy of every partition's outcomes (``docs/capacity.md``, step 2).

>>> from bidder.clicks.billing import Ledger
>>> from bidder.clicks.click_token import ClickSigner
>>> from bidder.query.catalog import Catalog
>>> signer = ClickSigner([b"key"])
>>> cat = Catalog()
>>> cat.upsert_shop(7, daily_budget=0.5, target_share=0.1)
>>> batch = ClickBatch(signer=signer, catalog=cat, ledger=Ledger(), click_window_s=30.0)
>>> def click(cid, ts, listing=5, price=0.3):
...     return Click(click_id=cid, query_id="q1", listing_id=listing, shop_id=7, user_id=1, ts=ts, slot=0,
...                  price=price, shown_at=100.0, token=signer.sign("q1", slot=0, listing_id=5, shop_id=7, price=0.3,
...                                                                 shown_at=100.0))
>>> [batch.decide(click("c1", 101.0)).entry.status, batch.decide(click("c1", 101.0)).entry.status]   # a resend
['charged', 'duplicate']
>>> batch.decide(click("c2", 102.0)).entry.amount   # what is left of the budget
0.2
>>> [batch.decide(click("c3", 102.0, listing=6)).reason, batch.decide(click("c4", 102.0, price=0.01)).reason]
['bad_token', 'bad_token']
>>> batch.decide(click("c5", 131.0)).reason
'click_after_window'
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bidder.clicks.billing import Ledger, LedgerEntry, day_of
from bidder.clicks.click_token import ClickSigner
from bidder.decoding import Rejection
from bidder.events import Click
from bidder.query.catalog import Catalog

__all__ = ["ClickBatch", "ClickDecision"]


@dataclass(frozen=True, slots=True)
class ClickDecision:
    """A click's ledger line."""

    click: Click
    entry: LedgerEntry


@dataclass
class ClickBatch:
    """Decides the clicks of one batch in order; see the module docstring."""

    signer: ClickSigner
    catalog: Catalog
    ledger: Ledger
    click_window_s: float
    _pending: dict[tuple[int, int], float] = field(default_factory=dict)
    """(shop, day) -> spend decided in this batch, not yet folded into ``ledger``"""
    _decided: set[str] = field(default_factory=set)

    def decide(self, click: Click) -> ClickDecision | Rejection:
        """The ledger line of ``click`` (counted against the batch from now on), or why it has none."""
        if not self.signer.verify(click.token, click.query_id, slot=click.slot, listing_id=click.listing_id,
                                  shop_id=click.shop_id, price=click.price, shown_at=click.shown_at):
            return Rejection("bad_token", f"the token of click {click.click_id!r} does not sign query "
                                          f"{click.query_id!r}, slot {click.slot}, listing {click.listing_id}, shop "
                                          f"{click.shop_id}, price {click.price} at {click.shown_at}")
        if click.ts - click.shown_at > self.click_window_s:
            return Rejection("click_after_window", f"click at {click.ts:.3f} is {click.ts - click.shown_at:.0f}s "
                                                   f"after its auction (window {self.click_window_s:.0f}s)")
        shop_row = self.catalog.shop_row_of(click.shop_id)
        key = (click.shop_id, day_of(click.ts))
        pending = self._pending.get(key, 0.0)
        entry = self.ledger.decide(
            click_id=click.click_id, shop_id=click.shop_id, listing_id=click.listing_id,
            query_id=click.query_id, user_id=click.user_id, slot=click.slot, ts=click.ts, price=click.price,
            budget=float(self.catalog.daily_budget[shop_row]) - pending)
        entry = replace(entry, spend_after=entry.spend_after + pending)
        if entry.click_id in self._decided and entry.status != "duplicate":  # resent within this batch
            entry = replace(entry, status="duplicate", amount=0.0, spend_after=entry.spend_after - entry.amount)
        self._pending[key] = pending + entry.amount
        self._decided.add(entry.click_id)
        return ClickDecision(click, entry)
