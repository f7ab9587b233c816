"""The bill agent's decisions, pure: a batch decided together (each click seeing the spend of those before
it, folded after the batch) gives exactly the lines of deciding and folding one click at a time."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.clicks.billing import Ledger, LedgerEntry
from bidder.clicks.click_decisions import ClickBatch, ClickDecision
from bidder.decoding import Rejection
from bidder.events import Click
from bidder.labels.auction_log import AuctionLog
from bidder.query.catalog import Catalog

T0 = 86_400.0 * 20_000  # a UTC midnight
WINDOW_S = 30.0


def _world(budgets: list[float]) -> tuple[AuctionLog, Catalog]:
    log = AuctionLog(window_s=120.0)
    cat = Catalog()
    for shop, budget in enumerate(budgets):
        cat.upsert_shop(shop, daily_budget=budget, target_share=0.1)
    for q in range(6):  # query q: listings 10q..10q+3, listing 10q+k of shop k % len(budgets)
        log.add({"query_id": f"q{q}", "ts": T0 + q, "winners": [
            {"slot": k, "listing_id": 10 * q + k, "shop_id": k % len(budgets), "price": 0.05 + 0.1 * k,
             "pctr": 0.02, "pcvr": 0.1} for k in range(4)]})
    return log, cat


def _rounded(e: LedgerEntry | str) -> LedgerEntry | str:
    if isinstance(e, str):
        return e
    return dataclasses.replace(e, amount=round(e.amount, 9), spend_after=round(e.spend_after, 9))


clicks = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 6), st.integers(0, 4), st.floats(0.0, 50.0)),
                  min_size=1, max_size=40)


def _click(i: int, q: int, k: int, dt: float, n_shops: int) -> Click:
    # q == 6: a query no auction knows; k == 4: a listing that did not win; click ids repeat (resends)
    return Click(click_id=f"c{i}", query_id=f"q{q}", listing_id=10 * q + k, shop_id=k % n_shops, user_id=1,
                 ts=T0 + q + dt)


@settings(max_examples=300, deadline=None)
@given(clicks, st.lists(st.sampled_from([0.0, 0.1, 0.3, 1.0, 50.0]), min_size=1, max_size=3), st.integers(1, 8))
def test_a_batch_decides_as_one_click_at_a_time(spec: list[tuple[int, int, int, float]], budgets: list[float],
                                                batch_size: int) -> None:
    stream = [_click(i, q, k, dt, len(budgets)) for i, q, k, dt in spec]

    # the oracle: one click at a time, each line folded before the next click
    log, cat = _world(budgets)
    ledger = Ledger()
    expected: list[LedgerEntry | str] = []
    for c in stream:
        d = ClickBatch(auctions=log, catalog=cat, ledger=ledger, click_window_s=WINDOW_S).decide(c)
        if isinstance(d, Rejection):
            expected.append(d.reason)
        else:
            ledger.apply(d.entry)
            expected.append(d.entry)

    # batches of `batch_size`, folded only after each batch
    log, cat = _world(budgets)
    ledger = Ledger()
    got: list[LedgerEntry | str] = []
    for start in range(0, len(stream), batch_size):
        batch = ClickBatch(auctions=log, catalog=cat, ledger=ledger, click_window_s=WINDOW_S)
        decided = [batch.decide(c) for c in stream[start:start + batch_size]]
        for d in decided:
            if isinstance(d, ClickDecision):
                ledger.apply(d.entry)
        got += [d.reason if isinstance(d, Rejection) else d.entry for d in decided]

    # float sums in another order (the batch's pending spend + the ledger's, against the ledger's running
    # sum) may differ in the last bits: money is compared to the nano-unit, everything else exactly
    assert [_rounded(e) for e in got] == [_rounded(e) for e in expected]
    # money: each click id charged at most once, no shop past its budget on any day
    charged = [e for e in got if isinstance(e, LedgerEntry) and e.status == "charged"]
    assert len({e.click_id for e in charged}) == len(charged)
    for shop, budget in enumerate(budgets):
        assert sum(e.amount for e in charged if e.shop_id == shop) <= budget + 1e-9


def test_rejections_name_the_reason() -> None:
    log, cat = _world([1.0, 1.0])
    batch = ClickBatch(auctions=log, catalog=cat, ledger=Ledger(), click_window_s=WINDOW_S)
    reasons = {
        "unknown_auction": Click(click_id="a", query_id="nope", listing_id=1, shop_id=0, user_id=1, ts=T0),
        "not_a_winner": Click(click_id="b", query_id="q0", listing_id=9, shop_id=0, user_id=1, ts=T0),
        "click_after_window": Click(click_id="c", query_id="q0", listing_id=0, shop_id=0, user_id=1, ts=T0 + 31),
        "shop_mismatch": Click(click_id="d", query_id="q0", listing_id=1, shop_id=0, user_id=1, ts=T0 + 1),
    }
    for reason, click in reasons.items():
        d = batch.decide(click)
        assert isinstance(d, Rejection) and d.reason == reason, d
    ok = batch.decide(Click(click_id="e", query_id="q0", listing_id=1, shop_id=1, user_id=1, ts=T0 + 1))
    assert isinstance(ok, ClickDecision) and ok.entry.status == "charged" and ok.entry.amount == 0.15
    assert ok.ad.slot == 1
