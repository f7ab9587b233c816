"""A sequential oracle for money: what the ledger must say, computed without Kafka, Faust or floats.

The billing agent (``streams/agents.py``) decides each click with :class:`bidder.clicks.billing.Ledger`. This
module re-derives the same rule independently, in integer micro-units, so the reliability suite can
check every ledger line a run wrote against it:

* **per line**: replaying the ledger's own order (offset order within each ``billing`` partition; a
  shop lives in one partition) through the rule gives the same status and amount for every line;
* **per shop and day, order-free**: charged total = ``min(budget, sum of prices of distinct clicks)``,
  whatever order the clicks arrived in, because each charge is ``min(price, budget - spent)``;
* **invariants**: no click id has two charged/unbilled lines, no shop's spend exceeds its budget, no
  expected click is missing from the ledger and none appears that was never sent.

>>> o = BillingOracle({7: 0.5})
>>> [o.decide(ClickFact("c1", 7, 0.3, 86_400.0)).amount, o.decide(ClickFact("c2", 7, 0.3, 86_401.0)).amount]
[0.3, 0.2]
>>> o.decide(ClickFact("c1", 7, 0.3, 86_402.0)).status
'duplicate'
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["BillingOracle", "BillingVerdict", "ClickFact", "Expected", "expected_charged", "verify_ledger"]

Status = Literal["charged", "unbilled", "duplicate"]
MICRO = 1_000_000
DAY_S = 86_400
_TOL = 2e-6  # the ledger rounds amounts to 1e-6 and sums floats


def _micros(x: float) -> int:
    return round(x * MICRO)


def _budget_micros(x: float) -> int:
    """A budget in whole micro-units, rounded down: spend may reach it, never pass it."""
    return math.floor(x * MICRO + 1e-3)


@dataclass(frozen=True, slots=True)
class ClickFact:
    """What the oracle needs to know about one click: who pays, how much at most, and when."""

    click_id: str
    shop_id: int
    price: float
    """the GSP price of the clicked slot, from the auction outcome"""
    ts: float


@dataclass(frozen=True, slots=True)
class Expected:
    """The oracle's decision for one click."""

    click_id: str
    shop_id: int
    day: int
    status: Status
    amount: float


class BillingOracle:
    """Feeds clicks one at a time, in order, through the charging rule (integer micro-units)."""

    def __init__(self, budgets: Mapping[int, float]) -> None:
        self._budget = {int(s): _budget_micros(b) for s, b in budgets.items()}
        self._spent: dict[tuple[int, int], int] = defaultdict(int)
        self._decided: set[str] = set()

    def decide(self, click: ClickFact) -> Expected:
        day = int(click.ts // DAY_S)
        if click.click_id in self._decided:
            return Expected(click.click_id, click.shop_id, day, "duplicate", 0.0)
        self._decided.add(click.click_id)
        left = self._budget.get(click.shop_id, 0) - self._spent[(click.shop_id, day)]
        amount = max(0, min(_micros(click.price), left))
        if amount <= 0:
            return Expected(click.click_id, click.shop_id, day, "unbilled", 0.0)
        self._spent[(click.shop_id, day)] += amount
        return Expected(click.click_id, click.shop_id, day, "charged", amount / MICRO)

    def spent(self) -> dict[tuple[int, int], float]:
        return {k: v / MICRO for k, v in self._spent.items()}


def expected_charged(budgets: Mapping[int, float],
                     clicks: Iterable[ClickFact]) -> dict[tuple[int, int], float]:
    """Charged total per (shop, day) in any arrival order: ``min(budget, sum of distinct prices)``."""
    seen: set[str] = set()
    total: dict[tuple[int, int], int] = defaultdict(int)
    for c in clicks:
        if c.click_id in seen:
            continue
        seen.add(c.click_id)
        total[(c.shop_id, int(c.ts // DAY_S))] += _micros(c.price)
    return {k: min(v, _budget_micros(budgets.get(k[0], 0.0))) / MICRO for k, v in total.items()}


@dataclass
class BillingVerdict:
    """What the ledger lines of a run say, checked against the oracle."""

    lines: int = 0
    decided: int = 0
    """click ids with one charged or unbilled line"""
    charged: int = 0
    unbilled: int = 0
    duplicate_lines: int = 0
    duplicate_charges: int = 0
    """click ids with more than one charged/unbilled line: must be 0"""
    overspent_shops: dict[tuple[int, int], float] = field(default_factory=dict)
    """(shop, day) -> amount over budget: must be empty"""
    line_mismatches: list[str] = field(default_factory=list)
    """lines whose status or amount differ from the sequential replay of the ledger order"""
    total_mismatches: dict[tuple[int, int], tuple[float, float]] = field(default_factory=dict)
    """(shop, day) -> (ledger total, order-free oracle total)"""
    missing: list[str] = field(default_factory=list)
    """click ids sent valid that have no decision: lost"""
    unexpected: list[str] = field(default_factory=list)
    """click ids decided that were never sent valid: false accepts"""
    charged_total: float = 0.0
    charged_less: int = 0
    """mismatched lines where the ledger charged less than the oracle (the safe direction)"""

    @property
    def ok(self) -> bool:
        return not (self.duplicate_charges or self.overspent_shops or self.line_mismatches
                    or self.total_mismatches or self.missing or self.unexpected)


def verify_ledger(
    budgets: Mapping[int, float],
    sent: Mapping[str, ClickFact],
    ledger_by_partition: Mapping[int, Sequence[Mapping[str, Any]]],
) -> BillingVerdict:
    """Check the ``billing`` topic (lines per partition, in offset order) against the clicks sent.

    ``sent`` holds every valid click id with the price of its auction slot (a resend is the same id).
    """
    v = BillingVerdict()
    oracle = BillingOracle(budgets)
    spend: dict[tuple[int, int], int] = defaultdict(int)
    decided: dict[str, int] = defaultdict(int)
    for _, lines in sorted(ledger_by_partition.items()):
        for line in lines:
            v.lines += 1
            cid, status = str(line["click_id"]), str(line["status"])
            fact = sent.get(cid)
            if fact is None:
                if status != "duplicate" and cid not in v.unexpected:
                    v.unexpected.append(cid)
                continue
            exp = oracle.decide(ClickFact(cid, fact.shop_id, fact.price, float(line["ts"])))
            amount = float(line["amount"])
            if exp.status != status or abs(exp.amount - amount) > _TOL:
                v.charged_less += amount < exp.amount - _TOL
                v.line_mismatches.append(f"{cid}: ledger {status} {amount:.6f}, oracle {exp.status} "
                                         f"{exp.amount:.6f}")
            if status == "duplicate":
                v.duplicate_lines += 1
                continue
            decided[cid] += 1
            if status == "charged":
                v.charged += 1
                v.charged_total += amount
                spend[(int(line["shop_id"]), int(line["day"]))] += _micros(amount)
            else:
                v.unbilled += 1
    v.decided = len(decided)
    v.duplicate_charges = sum(n - 1 for n in decided.values() if n > 1)
    for (shop, day), micros in spend.items():
        over = micros - _budget_micros(budgets.get(shop, 0.0))
        if over > 0:
            v.overspent_shops[(shop, day)] = over / MICRO
    v.missing = sorted(c for c in sent if c not in decided)
    # order-free totals over the clicks that were decided, at the day the ledger recorded
    facts = [sent[c] for c in decided if c in sent]
    want = expected_charged(budgets, facts)
    for key, total in want.items():
        got = spend.get(key, 0) / MICRO
        if abs(got - total) > _TOL * max(1, len(facts)):
            v.total_mismatches[key] = (got, total)
    return v
