"""T0: the money rules as properties, without a broker.

Random click sequences with resends (same ``click_id``), shuffled arrival and a simulated crash that
replays the last ``k`` ledger lines / reprocesses the last ``k`` clicks, through
:class:`bidder.clicks.billing.Ledger` (what the billing agent decides with) and
:class:`bidder.replica.state.BidderState`
(what every worker folds from the ``billing`` topic). Checked against the independent integer oracle
:mod:`streams.harness.oracle`: spend never exceeds a budget, a click id is decided (charged or unbilled) at
most once, the decisions equal the sequential oracle's, and a replay leaves the state as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.clicks.billing import Ledger, LedgerEntry
from bidder.decoding import Limits
from bidder.replica.state import BidderState
from streams.harness.oracle import BillingOracle, ClickFact, expected_charged, verify_ledger

DAY = 86_400.0
T0 = 20_000 * DAY + 3600.0


@dataclass(frozen=True)
class C:
    click_id: str
    shop_id: int
    price: float
    ts: float


prices = st.one_of(
    st.sampled_from([0.05, 0.1, 0.25, 0.3, 1.0]),
    st.floats(min_value=0.05, max_value=3.0, allow_nan=False, allow_infinity=False),
    st.decimals(min_value="0.05", max_value="3", places=6).map(float),
)
budgets = st.dictionaries(st.integers(0, 4), st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.5]),
                                                       st.floats(min_value=0, max_value=8.0)),
                          min_size=5, max_size=5)


@st.composite
def click_streams(draw: st.DrawFn) -> tuple[dict[int, float], list[C]]:
    b = draw(budgets)
    n = draw(st.integers(1, 60))
    base = [C(f"c{i}", draw(st.integers(0, 4)), draw(prices),
              T0 + draw(st.sampled_from([0.0, 1.0, 2.0, DAY])) + i) for i in range(n)]
    resent = draw(st.lists(st.sampled_from(base), max_size=n))
    stream = draw(st.permutations(base + resent))
    return b, list(stream)


def run_ledger(ledger: Ledger, budget: dict[int, float], clicks: list[C]) -> list[LedgerEntry]:
    out = []
    for c in clicks:
        e = ledger.decide(click_id=c.click_id, shop_id=c.shop_id, listing_id=1, query_id="q", user_id=1,
                          slot=0, ts=c.ts, price=c.price, budget=budget.get(c.shop_id, 0.0))
        ledger.apply(e)
        out.append(e)
    return out


def snapshot(ledger: Ledger) -> tuple[object, ...]:
    decided = sorted((k, v.status, v.amount) for k, v in ledger._decided.items())
    return (sorted(ledger.spend_today().items()), decided,
            ledger.counts["charged"], ledger.counts["unbilled"], ledger.totals["charged"])


@settings(max_examples=300, deadline=None)
@given(click_streams())
def test_spend_never_exceeds_budget_and_a_click_is_decided_once(
        case: tuple[dict[int, float], list[C]]) -> None:
    budget, clicks = case
    ledger = Ledger()
    entries = run_ledger(ledger, budget, clicks)
    for (shop, _day), spent in ledger.spend_today().items():
        assert spent <= budget.get(shop, 0.0) + 1e-9, (shop, spent, budget.get(shop))
    decided = [e.click_id for e in entries if e.status != "duplicate"]
    assert len(decided) == len(set(decided)) == len({c.click_id for c in clicks})
    # every decision equals the independent sequential oracle's
    oracle = BillingOracle(budget)
    for c, e in zip(clicks, entries, strict=True):
        want = oracle.decide(ClickFact(c.click_id, c.shop_id, c.price, c.ts))
        assert (e.status, round(e.amount, 6)) == (want.status, round(want.amount, 6)), (c, e, want)
    # and the totals do not depend on the arrival order
    by_day = expected_charged(budget, [ClickFact(c.click_id, c.shop_id, c.price, c.ts) for c in clicks])
    for key, total in by_day.items():
        assert abs(ledger.spend(*key) - total) <= 1e-5, (key, ledger.spend(*key), total)


@settings(max_examples=200, deadline=None)
@given(click_streams(), st.integers(0, 20), st.integers(0, 20))
def test_crash_and_redelivery_change_nothing(case: tuple[dict[int, float], list[C]], crash_at: int,
                                             k: int) -> None:
    """The agent wrote lines for clicks [0, j) and crashed; its last commit was at click j - k.

    The new owner folds the ledger topic, then reprocesses clicks from j - k: every redelivered click
    must become a ``duplicate`` line and the money must equal a run that never crashed.
    """
    budget, clicks = case
    j = min(crash_at, len(clicks))
    clean = Ledger()
    clean_entries = run_ledger(clean, budget, clicks)

    before = Ledger()
    topic = run_ledger(before, budget, clicks[:j])  # lines on the billing topic at the crash
    after = Ledger()
    for e in topic:
        after.apply(e)
    redo = max(0, j - k)
    topic += run_ledger(after, budget, clicks[redo:])
    assert snapshot(after)[:4] == snapshot(clean)[:4]
    redelivered = topic[j:j + (j - redo)]
    assert all(e.status == "duplicate" for e in redelivered)
    assert [(e.status, e.amount) for e in topic[:j] + topic[2 * j - redo:]] == \
        [(e.status, e.amount) for e in clean_entries]

    # the harness's verifier accepts the crashed ledger and agrees with the oracle line by line
    sent = {c.click_id: ClickFact(c.click_id, c.shop_id, c.price, c.ts) for c in clicks}
    verdict = verify_ledger(budget, sent, {0: [e.to_dict() for e in topic]})
    assert verdict.ok, verdict
    assert verdict.duplicate_lines == len(topic) - len({c.click_id for c in clicks})


def state() -> BidderState:
    return BidderState(half_life_s=3600.0, click_window_s=900.0, attribution_window_s=600.0, limits=Limits())


@settings(max_examples=150, deadline=None)
@given(click_streams(), st.integers(0, 30), st.integers(0, 4))
def test_state_fold_replay_of_last_k_records_is_a_no_op(case: tuple[dict[int, float], list[C]], k: int,
                                                        own_upto: int) -> None:
    """A worker folds the billing topic (the replicator re-reading after a reconnect repeats the last
    ``k`` offsets; the agent's own acknowledged writes arrive before the replica's copy)."""
    budget, clicks = case
    led = Ledger()
    lines = [orjson.dumps(e.to_dict()) for e in run_ledger(led, budget, clicks)]
    s = state()
    own = min(own_upto, len(lines))
    for off in range(own):  # the agent applied its first writes from the broker's ack
        s.apply_own_ledger(LedgerEntry.from_dict(orjson.loads(lines[off])), partition=0, offset=off)
    for off, raw in enumerate(lines):
        s.apply("billing", 0, off, raw, now=T0)
    first = snapshot(s.ledger), s.counts.copy(), dict(s.ledger.counts)
    for off in range(max(0, len(lines) - k), len(lines)):
        s.apply("billing", 0, off, lines[off], now=T0)
    assert (snapshot(s.ledger), s.counts.copy(), dict(s.ledger.counts)) == first
    assert snapshot(s.ledger)[:4] == snapshot(led)[:4]
