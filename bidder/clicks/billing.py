"""Money: charging clicks once, never past a shop's daily budget.

The ``billing`` topic is the ledger, keyed and partitioned like ``clicks`` (by shop), written only by
the agent that owns the partition. The money state is the fold of the ledger, so after any crash it
is rebuilt by reading the ledger, and a redelivered click finds its own earlier entry:

    charge   = min(price recorded in the auction outcome, budget - spend today)   (never below 0)
    status   = "charged"    first time this click_id is seen and charge > 0
               "unbilled"   first time seen, but the shop has no budget left today (charge 0)
               "duplicate"  this click_id already has a charged/unbilled entry (charge 0)

Days are UTC days of the click time; spend resets when a new day starts.

>>> led = Ledger()
>>> e = led.decide(click_id="c1", shop_id=7, listing_id=103, query_id="q", user_id=1, slot=0,
...                ts=86_400.5, price=0.30, budget=0.50)
>>> e.status, e.amount
('charged', 0.3)
>>> led.apply(e)
True
>>> led.decide(click_id="c2", shop_id=7, listing_id=103, query_id="q", user_id=1, slot=0,
...            ts=86_401.0, price=0.30, budget=0.50).amount
0.2
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["Ledger", "LedgerEntry", "day_of"]

Status = Literal["charged", "unbilled", "duplicate"]
_CENT = 1e-9  # tolerance for float sums when comparing against budgets


def day_of(ts: float) -> int:
    """UTC day number of an epoch time."""
    return int(ts // 86_400)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One line of the ledger: what happened to one click."""

    click_id: str
    shop_id: int
    listing_id: int
    query_id: str
    user_id: int
    slot: int
    ts: float
    day: int
    price: float
    """the GSP price recorded in the auction outcome"""
    amount: float
    """what the shop is charged (0 unless status is charged)"""
    status: Status
    spend_after: float
    """the shop's spend today after this entry"""

    def to_dict(self) -> dict[str, Any]:
        return {"v": 1, "type": "ledger", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LedgerEntry:
        return cls(**{k: d[k] for k in cls.__slots__})


class Ledger:
    """The fold of ledger entries: spend per shop per day and the clicks already decided.

    ``max_clicks`` bounds memory: the oldest decided click ids are forgotten first (a click resent
    after that many later clicks would be charged again; size it above clicks per click window).
    """

    def __init__(self, *, max_clicks: int = 2_000_000) -> None:
        self.max_clicks = max_clicks
        self._spend: dict[tuple[int, int], float] = {}
        self._decided: OrderedDict[str, LedgerEntry] = OrderedDict()
        self.totals: dict[Status, float] = {"charged": 0.0, "unbilled": 0.0, "duplicate": 0.0}
        self.counts: dict[Status, int] = {"charged": 0, "unbilled": 0, "duplicate": 0}
        self.version = 0
        """increases whenever spend changes (readers cache on it)"""

    def spend(self, shop_id: int, day: int) -> float:
        return self._spend.get((shop_id, day), 0.0)

    def spend_today(self) -> dict[tuple[int, int], float]:
        """A copy of spend by (shop, day)."""
        return dict(self._spend)

    def seen(self, click_id: str) -> LedgerEntry | None:
        return self._decided.get(click_id)

    def decide(
        self,
        *,
        click_id: str,
        shop_id: int,
        listing_id: int,
        query_id: str,
        user_id: int,
        slot: int,
        ts: float,
        price: float,
        budget: float,
    ) -> LedgerEntry:
        """What to write for a click, given the current fold (does not change it)."""
        day = day_of(ts)
        spent = self.spend(shop_id, day)
        if click_id in self._decided:
            status: Status = "duplicate"
            amount = 0.0
        else:
            # round the price to the currency unit (1e-6) but the budget left *down*: rounding
            # min(price, left) half-up charged 1.730469 against a budget of 1.73046875 (T0 found it)
            amount = max(0.0, min(round(price, 6), math.floor((budget - spent) * 1e6 + 1e-3) / 1e6))
            status = "charged" if amount > _CENT else "unbilled"
            if status == "unbilled":
                amount = 0.0
        return LedgerEntry(click_id=click_id, shop_id=shop_id, listing_id=listing_id, query_id=query_id,
                           user_id=user_id, slot=slot, ts=ts, day=day, price=price, amount=amount,
                           status=status, spend_after=spent + amount)

    def apply(self, entry: LedgerEntry) -> bool:
        """Fold one entry in; returns False (and changes nothing) for a click already decided."""
        if entry.click_id in self._decided or entry.status == "duplicate":
            self.counts["duplicate"] += 1
            return False
        self._decided[entry.click_id] = entry
        while len(self._decided) > self.max_clicks:
            self._decided.popitem(last=False)
        key = (entry.shop_id, entry.day)
        self._spend[key] = self._spend.get(key, 0.0) + entry.amount
        self.version += 1
        # charged: money taken; unbilled: the price the shop would have paid (revenue given up)
        self.totals[entry.status] += entry.amount if entry.status == "charged" else entry.price
        self.counts[entry.status] += 1
        return True
