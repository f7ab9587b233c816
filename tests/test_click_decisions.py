"""The bill agent's decisions, pure: a batch decided together (each click seeing the spend of those before
it, folded after the batch) gives exactly the lines of deciding and folding one click at a time; a click is
charged only the price its token signs."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.clicks.billing import Ledger, LedgerEntry
from bidder.clicks.click_decisions import ClickBatch, ClickDecision
from bidder.clicks.click_token import ClickSigner
from bidder.decoding import Rejection
from bidder.events import Click
from bidder.query.catalog import Catalog

T0 = 86_400.0 * 20_000  # a UTC midnight
WINDOW_S = 30.0


SIGNER = ClickSigner([b"test-key"])
Outcomes = dict[str, dict]


def _world(budgets: list[float]) -> tuple[Outcomes, Catalog]:
    cat = Catalog()
    for shop, budget in enumerate(budgets):
        cat.upsert_shop(shop, daily_budget=budget, target_share=0.1)
    outcomes: Outcomes = {}
    for q in range(6):  # query q: listings 10q..10q+3, listing 10q+k of shop k % len(budgets)
        winners = [{"slot": k, "listing_id": 10 * q + k, "shop_id": k % len(budgets), "price": 0.05 + 0.1 * k}
                   for k in range(4)]
        for w in winners:
            w["click_token"] = SIGNER.sign(f"q{q}", slot=w["slot"], listing_id=w["listing_id"],
                                           shop_id=w["shop_id"], price=w["price"], shown_at=T0 + q)
        outcomes[f"q{q}"] = {"query_id": f"q{q}", "ts": T0 + q, "winners": winners}
    return outcomes, cat


def _rounded(e: LedgerEntry | str) -> LedgerEntry | str:
    if isinstance(e, str):
        return e
    return dataclasses.replace(e, amount=round(e.amount, 9), spend_after=round(e.spend_after, 9))


clicks = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 6), st.integers(0, 4), st.floats(0.0, 50.0)),
                  min_size=1, max_size=40)


def _click(i: int, q: int, k: int, dt: float, outcomes: Outcomes) -> Click:
    # q == 6: a query that never ran (its token made up); k == 4: a listing that did not win (it names slot
    # 0's token); click ids repeat (resends)
    if q == 6:
        return Click(click_id=f"c{i}", query_id="q6", listing_id=60 + k, shop_id=0, user_id=1, ts=T0 + q + dt,
                     slot=0, price=0.05, shown_at=T0 + q, token="AAAAAAAAAAAAAAAAAAAAAA")
    outcome = outcomes[f"q{q}"]
    click = Click.of_winner(outcome, outcome["winners"][k % 4], click_id=f"c{i}", user_id=1, ts=T0 + q + dt)
    return dataclasses.replace(click, listing_id=10 * q + k) if k == 4 else click


@settings(max_examples=300, deadline=None)
@given(clicks, st.lists(st.sampled_from([0.0, 0.1, 0.3, 1.0, 50.0]), min_size=1, max_size=3), st.integers(1, 8))
def test_a_batch_decides_as_one_click_at_a_time(spec: list[tuple[int, int, int, float]], budgets: list[float],
                                                batch_size: int) -> None:
    outcomes, cat = _world(budgets)
    stream = [_click(i, q, k, dt, outcomes) for i, q, k, dt in spec]

    # the oracle: one click at a time, each line folded before the next click
    ledger = Ledger()
    expected: list[LedgerEntry | str] = []
    for c in stream:
        d = ClickBatch(signer=SIGNER, catalog=cat, ledger=ledger, click_window_s=WINDOW_S).decide(c)
        if isinstance(d, Rejection):
            expected.append(d.reason)
        else:
            ledger.apply(d.entry)
            expected.append(d.entry)

    # batches of `batch_size`, folded only after each batch
    ledger = Ledger()
    got: list[LedgerEntry | str] = []
    for start in range(0, len(stream), batch_size):
        batch = ClickBatch(signer=SIGNER, catalog=cat, ledger=ledger, click_window_s=WINDOW_S)
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
    outcomes, cat = _world([1.0, 1.0])
    batch = ClickBatch(signer=SIGNER, catalog=cat, ledger=Ledger(), click_window_s=WINDOW_S)
    q0 = outcomes["q0"]
    on_slot_1 = Click.of_winner(q0, q0["winners"][1], click_id="e", user_id=1, ts=T0 + 1)
    reasons = {
        "a": ("bad_token", dataclasses.replace(on_slot_1, query_id="nope")),  # a query that never ran
        "b": ("bad_token", dataclasses.replace(on_slot_1, listing_id=9)),  # a listing that did not win
        "c": ("bad_token", dataclasses.replace(on_slot_1, price=0.01)),  # a price lowered
        "d": ("bad_token", dataclasses.replace(on_slot_1, shop_id=0)),  # another shop
        "e": ("bad_token", dataclasses.replace(on_slot_1, slot=0)),  # another slot
        "f": ("bad_token", dataclasses.replace(on_slot_1, shown_at=T0 + 20)),  # a later auction time
        "g": ("bad_token", dataclasses.replace(on_slot_1, token=on_slot_1.token[:-1])),  # cut short
        "h": ("click_after_window", dataclasses.replace(on_slot_1, ts=T0 + 31)),
    }
    for click_id, (reason, click) in reasons.items():
        d = batch.decide(dataclasses.replace(click, click_id=click_id))
        assert isinstance(d, Rejection) and d.reason == reason, (click_id, d)
    ok = batch.decide(on_slot_1)
    assert isinstance(ok, ClickDecision) and ok.entry.status == "charged" and ok.entry.amount == 0.15
    assert ok.entry.slot == 1
    other_key = ClickBatch(signer=ClickSigner([b"another key"]), catalog=cat, ledger=Ledger(),
                           click_window_s=WINDOW_S)
    refused = other_key.decide(on_slot_1)
    assert isinstance(refused, Rejection) and refused.reason == "bad_token"
