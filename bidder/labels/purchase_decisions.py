"""Which purchase becomes a conversion, decided for a batch of purchases: pure, no I/O.

The attribute agent (``streams/agents.py``) reads purchases and hands each to :meth:`PurchaseBatch.decide`;
it writes the label update of a :class:`Conversion`, dead-letters a rejection with its reason and writes
nothing for a :class:`Repeated` order. A purchase is

* ``Repeated`` when its order was already attributed (its label update folded, ``attributed``) or
  converted earlier in this batch: a redelivered purchase;
* a :class:`Conversion` to the buyer's last click on the same listing at or before the purchase and at
  most the attribution window before it (``clicks``: the decided clicks, :class:`bidder.labels.attribution.ClickIndex`);
  its label update says ``converted=1`` (``label_version`` 2);
* otherwise rejected ``unattributed_purchase``.

A purchase refused only because its click is not decided yet (clicks and purchases are two topics read by
two agents) may be decided again with :meth:`PurchaseBatch.attribute` once the click is: the agent waits
until its bill agent has decided the clicks sent before the purchase (``streams.agents.await_decided_clicks``).

>>> from bidder.events import Purchase
>>> clicks = ClickIndex(window_s=600.0)
>>> clicks.add(user_id=5, listing_id=103, ts=10.0, click_id="c1", query_id="q1", slot=2)
>>> batch = PurchaseBatch(clicks=clicks, attributed=lambda order: False)
>>> p = Purchase(order_id="o1", user_id=5, listing_id=103, shop_id=7, ts=100.0, amount=20.0)
>>> d = batch.decide(p)
>>> d.label()["impression_id"], d.label()["converted"], batch.decide(p)
('q1:2', 1, Repeated(order_id='o1'))
>>> batch.decide(Purchase(order_id="o2", user_id=5, listing_id=103, shop_id=7, ts=700.0, amount=20.0)).reason
'unattributed_purchase'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bidder.decoding import Rejection
from bidder.events import Purchase
from bidder.labels.attribution import ClickIndex, ClickRef, label_update

__all__ = ["Conversion", "PurchaseBatch", "PurchaseDecision", "Repeated"]


@dataclass(frozen=True, slots=True)
class Conversion:
    """A purchase attributed to the click it follows."""

    purchase: Purchase
    click: ClickRef

    def label(self) -> dict[str, Any]:
        """The ``labels`` update: the clicked impression converted."""
        p, c = self.purchase, self.click
        return label_update(query_id=c.query_id, slot=c.slot, listing_id=p.listing_id, ts=p.ts, click_id=c.click_id,
                            order_id=p.order_id)

    def order_record(self) -> dict[str, Any]:
        """The ``orders`` record: the order is attributed (its partition's attribute agent attributes it once)."""
        p, c = self.purchase, self.click
        return {"v": 1, "type": "order_attributed", "order_id": p.order_id, "shop_id": p.shop_id,
                "user_id": p.user_id, "listing_id": p.listing_id, "query_id": c.query_id, "slot": c.slot,
                "click_id": c.click_id, "ts": p.ts, "amount": p.amount}


@dataclass(frozen=True, slots=True)
class Repeated:
    """A purchase whose order is already attributed: nothing to write."""

    order_id: str


PurchaseDecision = Conversion | Repeated | Rejection


@dataclass
class PurchaseBatch:
    """Decides the purchases of one batch; see the module docstring."""

    clicks: ClickIndex
    """decided clicks (the ledger's fold): what a purchase is attributed to"""
    attributed: Callable[[str], bool]
    """whether an order id was already attributed"""
    _converted: set[str] = field(default_factory=set)

    def decide(self, purchase: Purchase) -> PurchaseDecision:
        """``purchase``'s conversion (counted against the batch from now on), a repeat, or why it has none."""
        if purchase.order_id in self._converted or self.attributed(purchase.order_id):
            return Repeated(purchase.order_id)
        return self.attribute(purchase)

    def attribute(self, purchase: Purchase) -> Conversion | Rejection:
        """The conversion to the buyer's last decided click on the listing within the window, or the refusal."""
        ref = self.clicks.attribute(user_id=purchase.user_id, listing_id=purchase.listing_id, ts=purchase.ts)
        if ref is None:
            return Rejection("unattributed_purchase", f"no click by user {purchase.user_id} on listing "
                                                      f"{purchase.listing_id} in the {self.clicks.window_s:.0f}s "
                                                      f"before {purchase.ts}")
        self._converted.add(purchase.order_id)
        return Conversion(purchase, ref)
