"""Strict decoding: every rejection kind, with a precise reason; valid events decode exactly."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidder.decoding import REASONS, Limits, Rejection, decode
from bidder.events import Click, Listing, Purchase, Query, Shop, encode
from bidder.query.features import QueryContext

NOW = 1_800_000_000.0
LIMITS = Limits(max_bytes=20_000, max_candidates=50, max_age_s=3600, max_future_s=60)


def query_dict(**over: object) -> dict[str, object]:
    d: dict[str, object] = {
        "v": 1, "type": "query", "query_id": "q-1", "ts": NOW, "user_id": 5,
        "context": {"device": "mobile", "page": "search", "hour": 3, "category": 2}, "text": "red mug",
        "candidates": {"listing_id": [103, 203, 303], "relevance": [0.9, 0.5, 0.1]},
    }
    d.update(over)
    return d


def click_dict(**over: object) -> dict[str, object]:
    d: dict[str, object] = {"v": 1, "type": "click", "click_id": "c-1", "query_id": "q-1", "listing_id": 103,
                            "shop_id": 17, "user_id": 5, "ts": NOW, "slot": 2, "price": 0.25, "shown_at": NOW - 5,
                            "token": "dG9rZW4"}
    d.update(over)
    return d


def reason(topic: str, raw: bytes | None) -> str:
    out = decode(topic, raw, now=NOW, limits=LIMITS)
    assert isinstance(out, Rejection), out
    assert out.detail
    return out.reason


def test_valid_events_round_trip() -> None:
    import numpy as np

    q = Query(query_id="q-9", ts=NOW, user_id=3, context=QueryContext("app", "market", 23, 0), text="",
              listing_ids=np.array([5, 6]), relevance=np.array([0.25, 1.0]), latency_budget_ms=20.0)
    got = decode("queries", encode(q), now=NOW, limits=LIMITS)
    assert isinstance(got, Query)
    assert got.listing_ids.tolist() == [5, 6] and got.relevance.tolist() == [0.25, 1.0]
    assert got.context == q.context and got.latency_budget_ms == 20.0
    for topic, ev in [
        ("clicks", Click("c", "q", 1, 2, 3, NOW, 0, 0.25, NOW - 5, "tok")),
        ("purchases", Purchase("o", 3, 1, 9, NOW, 12.5)),
        ("listings", Listing(1, 2, 9.99, 4, NOW, active=False)),
        ("shops", Shop(2, 100.0, 0.2, NOW)),
    ]:
        assert decode(topic, encode(ev), now=NOW, limits=LIMITS) == ev


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"x" * 20_001, "too_large"),
        (b'{"v":1,"type":"click","click_id":"\xff"}', "invalid_utf8"),
        (b'{"v":1,', "invalid_json"),
        (b"[" * 2000 + b"]" * 2000, "too_deep"),
        (b'{"v":1,"x":NaN}', "invalid_json"),
        (b'{"v":1,"ts":1e400}', "non_finite"),
        (b'{"v":1,"ts":' + b"9" * 5000 + b"}", "non_finite"),
        (b"[1,2]", "not_object"),
        (b'"click"', "not_object"),
        (b'{"v":1,"v":1,"type":"click"}', "duplicate_key"),
        (orjson.dumps(click_dict(v=2)), "schema_version"),
        (orjson.dumps(click_dict(type="purchase")), "wrong_event_type"),
        (orjson.dumps({k: v for k, v in click_dict().items() if k != "shop_id"}), "missing_field"),
        (orjson.dumps(click_dict(extra=1)), "unexpected_field"),
        (orjson.dumps(click_dict(listing_id="103")), "wrong_type"),
        (orjson.dumps(click_dict(listing_id=1.5)), "wrong_type"),
        (orjson.dumps(click_dict(listing_id=True)), "wrong_type"),
        (orjson.dumps(click_dict(listing_id=-1)), "out_of_range"),
        (orjson.dumps(click_dict(listing_id=2**64 - 1)), "out_of_range"),
        (orjson.dumps(click_dict(click_id="")), "out_of_range"),
        (orjson.dumps(click_dict(ts=NOW - 7200)), "stale_timestamp"),
        (orjson.dumps(click_dict(ts=NOW + 600)), "future_timestamp"),
        (orjson.dumps(click_dict(click_id="a\x00b")), None),  # control characters are data, not an error
        (orjson.dumps({k: v for k, v in click_dict().items() if k != "token"}), "missing_field"),
        (orjson.dumps(click_dict(token="")), "out_of_range"),
        (orjson.dumps(click_dict(token="t" * 65)), "out_of_range"),
        (orjson.dumps(click_dict(price=-0.1)), "out_of_range"),
        (orjson.dumps(click_dict(slot=-1)), "out_of_range"),
        (orjson.dumps(click_dict(shown_at=0)), "out_of_range"),
    ],
)
def test_click_rejections(raw: bytes | None, expected: str | None) -> None:
    if expected is None:
        assert isinstance(decode("clicks", raw, now=NOW, limits=LIMITS), Click)
    else:
        assert reason("clicks", raw) == expected


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"candidates": {"listing_id": [], "relevance": []}}, "no_candidates"),
        ({"candidates": {"listing_id": list(range(51)), "relevance": [0.1] * 51}}, "too_many_candidates"),
        ({"candidates": {"listing_id": [1, 1], "relevance": [0.1, 0.2]}}, "duplicate_candidates"),
        ({"candidates": {"listing_id": [1, 2], "relevance": [0.1]}}, "length_mismatch"),
        ({"candidates": {"listing_id": [1, "2"], "relevance": [0.1, 0.2]}}, "wrong_type"),
        ({"candidates": {"listing_id": [1, 2], "relevance": [0.1, None]}}, "wrong_type"),
        ({"candidates": {"listing_id": [1, 2], "relevance": [0.1, -0.2]}}, "out_of_range"),
        ({"candidates": {"listing_id": [1, 2**64 - 1], "relevance": [0.1, 0.2]}}, "out_of_range"),
        ({"candidates": {"listing_id": [-1, 2], "relevance": [0.1, 0.2]}}, "out_of_range"),
        ({"candidates": [[1, 0.5]]}, "wrong_type"),
        ({"context": {"device": "tv", "page": "search", "hour": 3, "category": 2}}, "out_of_range"),
        ({"context": {"device": "app", "page": "search", "hour": 24, "category": 2}}, "out_of_range"),
        ({"latency_budget_ms": 0}, "out_of_range"),
        ({"user_id": None}, "wrong_type"),
    ],
)
def test_query_rejections(over: dict[str, object], expected: str) -> None:
    assert reason("queries", orjson.dumps(query_dict(**over))) == expected


@pytest.mark.parametrize(
    ("topic", "body", "expected"),
    [
        ("listings", {"v": 1, "type": "listing", "listing_id": 1, "shop_id": 2, "price": -3.0, "category": 1,
                      "ts": NOW}, "out_of_range"),
        ("listings", {"v": 1, "type": "listing", "listing_id": 1, "shop_id": 2, "price": 0, "category": 1,
                      "ts": NOW}, "out_of_range"),
        ("shops", {"v": 1, "type": "shop", "shop_id": 2, "daily_budget": -1.0, "target_share": 0.1, "ts": NOW},
         "out_of_range"),
        ("shops", {"v": 1, "type": "shop", "shop_id": 2, "daily_budget": 5.0, "target_share": 1.5, "ts": NOW},
         "out_of_range"),
        ("purchases", {"v": 1, "type": "purchase", "order_id": "o", "user_id": 1, "listing_id": 1, "shop_id": 2,
                       "ts": NOW, "amount": 0}, "out_of_range"),
        ("nope", {"v": 1}, "unknown_topic"),
    ],
)
def test_other_rejections(topic: str, body: dict[str, object], expected: str) -> None:
    assert reason(topic, orjson.dumps(body)) == expected


def test_duplicate_key_inside_nested_object_and_string_tricks() -> None:
    raw = orjson.dumps(query_dict()).replace(b'"hour":3', b'"hour":3,"hour":4')
    assert reason("queries", raw) == "duplicate_key"
    # a key-looking text inside a string value is not a key
    ok = orjson.dumps(query_dict(text='"user_id": 1, \\" x'))
    assert isinstance(decode("queries", ok, now=NOW, limits=LIMITS), Query)


def test_every_reason_is_documented() -> None:
    with pytest.raises(ValueError, match="unknown rejection reason"):
        Rejection("made_up", "x")
    assert all(REASONS.values())


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    for topic in ("queries", "clicks", "purchases", "listings", "shops"):
        out = decode(topic, raw, now=NOW, limits=LIMITS)
        assert isinstance(out, Rejection) or out is not None


SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5))


@given(st.recursive(SCALARS,
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                    max_leaves=20))
def test_arbitrary_json_is_rejected_not_raised(obj: object) -> None:
    out = decode("clicks", orjson.dumps(obj), now=NOW, limits=LIMITS)
    assert isinstance(out, Rejection | Click)
