"""The attribute agent's decisions, pure: a purchase converts on the buyer's last click on the same listing at
or before it and within the attribution window, and on nothing else; an order converts once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.decoding import Rejection
from bidder.events import Purchase
from bidder.labels.attribution import ClickIndex
from bidder.labels.purchase_decisions import Conversion, PurchaseBatch, Repeated

WINDOW_S = 600.0
T0 = 1_767_272_400.0

# (user, listing, seconds after T0): few buyers and listings so that matches and near misses are common
click_specs = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.floats(0.0, 2000.0)), max_size=8)
purchase_specs = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.floats(0.0, 2000.0)), min_size=1,
                          max_size=8)


def _batch(clicks: list[tuple[int, int, float]], attributed: frozenset[str] = frozenset()) -> PurchaseBatch:
    index = ClickIndex(window_s=WINDOW_S)
    for i, (user, listing, dt) in enumerate(clicks):
        index.add(user_id=user, listing_id=listing, ts=T0 + dt, click_id=f"c{i}", query_id=f"q{i}", slot=i % 4)
    return PurchaseBatch(clicks=index, attributed=attributed.__contains__)


def _expected_click(clicks: list[tuple[int, int, float]], user: int, listing: int, dt: float) -> str | None:
    """The oracle: every click looked at, the latest one (the last added among equal times) that matches."""
    order = sorted(range(len(clicks)), key=lambda i: T0 + clicks[i][2])  # times as the events carry them
    best = None
    bought = T0 + dt
    for i in order:
        u, lst, t = clicks[i]
        if u == user and lst == listing and T0 + t <= bought and bought - (T0 + t) <= WINDOW_S:
            best = f"c{i}"
    return best


@settings(max_examples=400, deadline=None)
@given(click_specs, purchase_specs)
def test_a_purchase_converts_on_the_last_matching_click_in_the_window(
        clicks: list[tuple[int, int, float]], purchases: list[tuple[int, int, float]]) -> None:
    batch = _batch(clicks)
    for j, (user, listing, dt) in enumerate(purchases):
        p = Purchase(order_id=f"o{j}", user_id=user, listing_id=listing, shop_id=3, ts=T0 + dt, amount=10.0)
        d = batch.decide(p)
        want = _expected_click(clicks, user, listing, dt)
        if want is None:
            assert isinstance(d, Rejection) and d.reason == "unattributed_purchase", d
            continue
        assert isinstance(d, Conversion) and d.click.click_id == want, (d, want)
        label = d.label()
        i = int(want[1:])
        assert label["impression_id"] == f"q{i}:{i % 4}" and label["order_id"] == p.order_id
        assert (label["converted"], label["clicked"], label["label_version"]) == (1, 1, 2)
        assert label["listing_id"] == listing and label["ts"] == p.ts


def test_the_window_and_the_buyer_and_listing_decide() -> None:
    batch = _batch([(1, 7, 100.0)])  # buyer 1 clicked listing 7 at T0 + 100

    def reason(user: int, listing: int, dt: float, order: str) -> str:
        d = batch.decide(Purchase(order_id=order, user_id=user, listing_id=listing, shop_id=3, ts=T0 + dt, amount=1.0))
        return "converted" if isinstance(d, Conversion) else "repeated" if isinstance(d, Repeated) else d.reason

    table = [
        (1, 7, 100.0, "o1", "converted"),  # the second of the click
        (1, 7, 700.0, "o2", "converted"),  # the window's last second
        (1, 7, 700.5, "o3", "unattributed_purchase"),  # past the window
        (1, 7, 99.0, "o4", "unattributed_purchase"),  # before the click
        (2, 7, 200.0, "o5", "unattributed_purchase"),  # another buyer
        (1, 8, 200.0, "o6", "unattributed_purchase"),  # another listing
        (1, 7, 300.0, "o1", "repeated"),  # the same order again
        (1, 7, 300.0, "o3", "converted"),  # a refused order is not a repeat
    ]
    assert [reason(u, lst, dt, o) for u, lst, dt, o, _ in table] == [want for *_, want in table]


def test_an_order_already_attributed_is_a_repeat_and_its_record_names_the_click() -> None:
    batch = _batch([(1, 7, 100.0)], attributed=frozenset({"old"}))
    old = Purchase(order_id="old", user_id=1, listing_id=7, shop_id=3, ts=T0 + 150, amount=1.0)
    assert batch.decide(old) == Repeated("old")
    conv = batch.attribute(old)  # attribute alone does not look at the orders
    assert isinstance(conv, Conversion)
    record = conv.order_record()
    assert (record["type"], record["order_id"], record["shop_id"], record["click_id"], record["query_id"]) == (
        "order_attributed", "old", 3, "c0", "q0")
    late = Purchase(order_id="new", user_id=2, listing_id=7, shop_id=3, ts=T0 + 150, amount=1.0)
    assert isinstance(batch.decide(late), Rejection)  # no decided click by that buyer: nothing to convert on
