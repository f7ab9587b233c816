"""The replicated fold: idempotent under redelivery, catalog tombstones, maturity, attribution, pacing."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidder.clicks.billing import Ledger
from bidder.clicks.shop_spend import SpendRecord
from bidder.decoding import Limits
from bidder.events import Listing, Shop, encode
from bidder.labels.attribution import ClickIndex, label_update, provisional_labels
from bidder.labels.auction_log import AuctionLog
from bidder.query.budget import LedgerBudget
from bidder.query.pacing import pacing_multiplier
from bidder.replica.state import BidderState

T = 1_800_000_000.0


def state() -> BidderState:
    s = BidderState(half_life_s=3600.0, click_window_s=600.0, attribution_window_s=300.0, limits=Limits())
    s.apply("shops", 0, 0, encode(Shop(7, 10.0, 0.05, T)), now=T)
    s.apply("listings", 0, 0, encode(Listing(103, 7, 20.0, 1, T)), now=T)
    return s


def outcome(qid: str = "q1") -> bytes:
    return orjson.dumps({"query_id": qid, "ts": T, "user_id": 5, "model_versions": {"ctr": "v", "cvr": "w"},
                         "winners": [{"slot": 0, "listing_id": 103, "shop_id": 7, "price": 0.4, "pctr": 0.1,
                                      "pcvr": 0.05, "bid": 0.5}]})


def ledger_line(cid: str = "c1", status: str = "charged") -> bytes:
    led = Ledger()
    e = led.decide(click_id=cid, shop_id=7, listing_id=103, query_id="q1", user_id=5, slot=0, ts=T + 1,
                   price=0.4, budget=10.0)
    d = e.to_dict()
    d["status"] = status
    return orjson.dumps(d)


def test_redelivered_records_change_nothing() -> None:
    s = state()
    s.apply("auctions", 0, 0, outcome(), now=T)
    s.apply("auctions", 0, 1, outcome(), now=T)  # a redelivered query's second outcome
    s.apply("billing", 0, 0, ledger_line(), now=T)
    s.apply("billing", 0, 1, ledger_line(), now=T)  # a second charged line for the same click: ignored
    conv = orjson.dumps(label_update(query_id="q1", slot=0, listing_id=103, ts=T + 5, click_id="c1",
                                     order_id="o1"))
    s.apply("labels", 0, 0, conv, now=T)
    s.apply("labels", 0, 1, conv, now=T)
    view = s.stats.view(np.array([s.catalog.listing_row(103)]), now=T + 5)
    assert s.counts["auctions"] == 1 and s.counts["auctions_repeated"] == 1
    assert s.ledger.spend(7, int(T // 86_400)) == 0.4
    assert s.ledger.counts["charged"] == 1 and s.ledger.counts["duplicate"] == 1
    assert s.counts["conversions"] == 1 and s.counts["conversions_repeated"] == 1
    assert 0.99 < float(view.clicks[0]) <= 1.0  # one click, decayed for 4 s of a 1 h half-life
    assert 0.99 < float(view.conversions[0]) <= 1.0
    # a replica reading a line the billing agent already applied locally skips it by offset
    s.apply_own_ledger(s.ledger.decide(click_id="c2", shop_id=7, listing_id=103, query_id="q1", user_id=5,
                                       slot=0, ts=T + 2, price=0.4, budget=10.0), partition=0, offset=2)
    s.apply("billing", 0, 2, ledger_line("c2"), now=T)
    assert s.ledger.counts["charged"] == 2


def test_unreadable_and_invalid_records_are_counted_not_raised() -> None:
    s = state()
    s.apply("auctions", 0, 0, b"{not json", now=T)
    s.apply("listings", 0, 1, b'{"v":1,"type":"listing","listing_id":1}', now=T)
    assert s.counts["auctions_unreadable"] == 1 and s.counts["listings_rejected"] == 1


def test_listing_tombstone_withdraws_from_bidding() -> None:
    s = state()
    s.apply("listings", 0, 1, encode(Listing(103, 7, 20.0, 1, T, active=False)), now=T)
    _, known = s.catalog.rows(np.array([103]))
    assert not known[0]


def test_auction_log_matures_with_click_flags() -> None:
    log = AuctionLog(window_s=60.0)
    assert log.add(orjson.loads(outcome("a")))
    log.mark_clicked("a", 103)
    later = orjson.loads(outcome("b"))
    later["ts"] = T + 120
    log.add(later)
    [m] = log.take_matured()
    assert (m.target, m.version, m.ts, m.y, m.shadow_version, m.shadow_p) == ("ctr", "v", T, (1,), "", ())
    assert m.p == pytest.approx((0.1,))
    assert not log.knows("a") and log.knows("b")


def _at(qid: str, ts: float, *, shadow: bool = False) -> dict[str, Any]:
    rec: dict[str, Any] = orjson.loads(outcome(qid))
    rec["ts"] = ts
    rec["winners"].append({"slot": 1, "listing_id": 104, "shop_id": 7, "price": 0.3, "pctr": 0.2, "pcvr": 0.1})
    if shadow:
        rec["shadow"] = {"versions": {"ctr": "s-ctr", "cvr": "s-cvr"}, "pctr": [0.3, 0.4], "pcvr": [0.5, 0.6]}
    return rec


def test_conversion_labels_mature_after_click_and_attribution_windows() -> None:
    log = AuctionLog(window_s=60.0, conversion_window_s=100.0)
    log.add(_at("a", T, shadow=True))
    log.mark_clicked("a", 103)
    log.mark_clicked("a", 104)
    log.add(_at("b", T + 61))  # a leaves the click window: CTR final, CVR not yet
    [ctr] = log.take_matured()
    assert (ctr.target, ctr.y, ctr.shadow_version) == ("ctr", (1, 1), "s-ctr")
    assert ctr.shadow_p == pytest.approx((0.3, 0.4))
    log.mark_converted("a", 104)  # a purchase attributed after the auction left the click window
    log.mark_converted("zzz", 1)  # never shown: ignored
    log.add(_at("c", T + 159))  # 60 + 100 s after the auction: not yet due
    assert [m.target for m in log.take_matured()] == ["ctr"]  # b's CTR only
    log.add(_at("d", T + 160))
    cvr = [m for m in log.take_matured() if m.target == "cvr"]
    assert len(cvr) == 1 and cvr[0].version == "w" and cvr[0].y == (0, 1)
    assert cvr[0].p == pytest.approx((0.05, 0.1)) and cvr[0].shadow_p == pytest.approx((0.5, 0.6))
    assert cvr[0].shadow_version == "s-cvr"


def test_unclicked_winners_never_wait_for_conversions() -> None:
    log = AuctionLog(window_s=60.0, conversion_window_s=100.0)
    log.add(_at("a", T))
    log.add(_at("b", T + 1000))
    matured = log.take_matured()
    assert [m.target for m in matured] == ["ctr"] and matured[0].y == (0, 0)
    assert matured[0].shadow_p == ()


def test_click_index_attributes_last_click_in_window() -> None:
    idx = ClickIndex(window_s=100.0)
    idx.add(user_id=1, listing_id=9, ts=10.0, click_id="old", query_id="q0", slot=1)
    idx.add(user_id=1, listing_id=9, ts=50.0, click_id="new", query_id="q1", slot=2)
    assert idx.attribute(user_id=1, listing_id=9, ts=60.0).click_id == "new"
    assert idx.attribute(user_id=1, listing_id=9, ts=30.0).click_id == "old"
    assert idx.attribute(user_id=1, listing_id=9, ts=5.0) is None  # before any click
    assert idx.attribute(user_id=2, listing_id=9, ts=60.0) is None
    labels = provisional_labels(orjson.loads(outcome()))
    assert labels["examples"][0]["clicked"] == 0 and labels["label_version"] == 0


@given(st.floats(0, 200), st.floats(1, 200), st.floats(0, 1))
def test_pacing_shades_ahead_of_schedule_and_stops_when_spent(spend: float, budget: float, frac: float) -> None:
    m = pacing_multiplier(spend=np.array([spend]), budget=np.array([budget]), day_fraction=frac)[0]
    if spend >= budget:
        assert m == 0.0
    else:
        assert 0.25 <= m <= 1.5
        more_spend = max(min(spend + 1, budget - 1e-9), spend)  # spend a hair under budget: no room for more
        more = pacing_multiplier(spend=np.array([more_spend]), budget=np.array([budget]), day_fraction=frac)[0]
        assert more <= m  # spending more never raises the multiplier


def test_ledger_budget_reads_spend_live() -> None:
    s = state()
    budget = LedgerBudget(catalog=s.catalog, ledger=s.ledger, clock=lambda: T)
    row = np.array([s.catalog.shop_row_of(7)])
    assert budget.remaining(row).tolist() == [10.0]
    s.apply("billing", 0, 0, ledger_line(), now=T)
    assert budget.remaining(row).tolist() == [9.6]


def test_calibration_is_marked_by_label_updates_not_by_ledger_lines() -> None:
    # a worker's replica reads the labels of its own outcomes; the ledger lines of its own shops belong to
    # other workers' outcomes, and mark none
    s = state()
    s.apply("auctions", 0, 0, outcome(), now=T)
    s.apply("billing", 0, 0, ledger_line(), now=T)
    assert not s.auctions.clicked("q1", 103)
    click = orjson.dumps(label_update(query_id="q1", slot=0, listing_id=103, ts=T + 1, click_id="c1"))
    s.apply("labels", 0, 0, click, now=T)
    assert s.auctions.clicked("q1", 103)
    assert s.counts["conversions"] == 0


def test_published_spend_paces_shops_this_worker_does_not_bill() -> None:
    s = state()
    budget = LedgerBudget(catalog=s.catalog, ledger=s.spend, clock=lambda: T)
    row = np.array([s.catalog.shop_row_of(7)])
    day = int(T // 86_400)
    s.apply("shop-spend", 0, 0, SpendRecord(partition=3, day=day, shop_ids=(7,), spend=(2.5,), at=T).encode(), now=T)
    assert budget.remaining(row).tolist() == [7.5]
    s.apply("shop-spend", 0, 1, SpendRecord(partition=3, day=day - 1, shop_ids=(7,), spend=(9.0,), at=T).encode(),
            now=T)  # yesterday's spend: not today's
    assert budget.remaining(row).tolist() == [7.5]
    for i in range(7):  # the own ledger, ahead of what was published: the larger counts
        s.apply("billing", 3, i, ledger_line(f"c{i}"), now=T)
    assert budget.remaining(row).tolist() == pytest.approx([10.0 - 2.8])
    s.apply("shop-spend", 0, 2, None, now=T)
    s.apply("shop-spend", 0, 3, b'{"type": "shop_spend", "partition": 1}', now=T)
    assert s.counts["shop-spend_tombstones"] == 1 and s.counts["shop-spend_unreadable"] == 1


def test_changed_billing_partitions_are_taken_once_and_only_when_owned() -> None:
    s = state()
    s.apply("billing", 2, 0, ledger_line("c1"), now=T)
    s.apply("billing", 1, 0, ledger_line("c2"), now=T)
    day = int(T // 86_400)
    assert s.take_spend_changes({2}) == {2: day}
    assert s.take_spend_changes({2}) == {}
    assert s.take_spend_changes({1, 2}) == {1: day}
    assert s.billing_shops == {2: {7}, 1: {7}}


def test_attributed_orders_are_folded_from_the_orders_topic() -> None:
    s = state()
    order = {"v": 1, "type": "order_attributed", "order_id": "o7", "shop_id": 7, "user_id": 5, "listing_id": 103,
             "query_id": "q1", "slot": 0, "click_id": "c1", "ts": T + 3, "amount": 20.0}
    assert not s.order_attributed("o7")
    s.apply("orders", 0, 0, orjson.dumps(order), now=T)
    s.apply("orders", 0, 1, orjson.dumps(order), now=T)
    s.apply("orders", 0, 2, orjson.dumps({**order, "type": "click"}), now=T)
    assert s.order_attributed("o7") and s.counts["orders"] == 1 and s.counts["orders_unreadable"] == 1
    s.own_order("o8")
    assert s.order_attributed("o8")


@pytest.mark.parametrize("value", [b"[1, 2]", b'"text"', b"3", b"null", b"{}", b'{"type": "label_update"}', None])
def test_any_record_on_a_replicated_topic_is_folded_or_counted_never_raised(value: bytes | None) -> None:
    s = state()
    for i, topic in enumerate(("listings", "shops", "auctions", "billing", "labels", "orders", "shop-spend")):
        s.apply(topic, 0, i, value, now=T)
    assert not s.auctions.knows("q1") and s.ledger.counts["charged"] == 0


def test_a_skipped_ledger_line_fetched_again_is_folded_below_the_own_ledger_mark() -> None:
    s = state()
    # this worker's own line at offset 5 moved the mark; another worker's line at 3 was skipped by a
    # fetch and comes back from the gap repair after it
    s.apply_own_ledger(s.ledger.decide(click_id="c5", shop_id=7, listing_id=103, query_id="q1", user_id=5,
                                       slot=0, ts=T + 2, price=0.4, budget=10.0), partition=0, offset=5)
    s.apply("billing", 0, 3, ledger_line("c3"), now=T)
    assert s.ledger.spend(7, int(T // 86_400)) == pytest.approx(0.4)  # below the mark: skipped
    s.apply("billing", 0, 3, ledger_line("c3"), now=T, repaired=True)
    assert s.ledger.spend(7, int(T // 86_400)) == pytest.approx(0.8)
    assert s.ledger_applied[0] == 6  # the mark stays where it was
    s.apply("billing", 0, 3, ledger_line("c3"), now=T, repaired=True)  # a second repair: nothing twice
    assert s.ledger.spend(7, int(T // 86_400)) == pytest.approx(0.8)
