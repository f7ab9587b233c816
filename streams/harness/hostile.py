"""Hostile records with their truth: what a broken or malicious producer can put on our topics.

Each kind builds the raw ``(topic, key, value)`` of one record and the dead-letter ``reason`` the
bidder must give it (:data:`bidder.decoding.REASONS`). Most are refused by the strict decoder; a few
only by the worker, which knows the catalog, the click token key and the clicks (``no_known_candidates``,
``bad_token``, ``unattributed_purchase``, ``shop_mismatch``, ``wrong_key``). Pure and seeded: the reliability
harness (``streams/harness/chaos.py``) mixes them into live traffic and checks that every one lands in
``dead-letters`` exactly once with its reason, and that nothing valid does.

Catalog records (``listings``, ``shops``) use ids far above any real one: the topics are compacted,
and a hostile record keyed like a real listing would replace it.

>>> f = HostileFactory(rng=np.random.default_rng(0), now=1_700_000_000.0, listings=[(103, 7)])
>>> r = f.make("truncated_json", 0)
>>> r.topic, r.reason, r.value[:10]
('clicks', 'invalid_json', b'{"v":1,"ty')
>>> len(KINDS) >= 30
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from bidder.decoding import REASONS
from bidder.topics import TOPICS

__all__ = ["KINDS", "HostileFactory", "HostileRecord"]

_FAR_ID = 9_000_000_000  # ids no real catalog uses


@dataclass(frozen=True, slots=True)
class HostileRecord:
    """One record to send and the truth about it."""

    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    reason: str
    """the dead-letter reason the bidder must give"""
    decoder_only: bool
    """True when :func:`bidder.decoding.decode` alone refuses it (no catalog or auction needed)"""


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


class HostileFactory:
    """Builds hostile records around a real catalog (``listings``: ``(listing_id, shop_id)`` pairs)."""

    def __init__(self, *, rng: np.random.Generator, now: float, listings: Sequence[tuple[int, int]],
                 max_bytes: int = 256_000, max_candidates: int = 2000) -> None:
        if not listings:
            raise ValueError("the factory needs at least one real listing")
        self.rng = rng
        self.now = now
        self.listings = list(listings)
        self.max_bytes = max_bytes
        self.max_candidates = max_candidates

    # -- valid templates ---------------------------------------------------------------------------
    def _pick(self) -> tuple[int, int]:
        return self.listings[int(self.rng.integers(len(self.listings)))]

    def _query(self, i: int) -> dict[str, Any]:
        n = min(8, len(self.listings))
        rows = self.rng.choice(len(self.listings), size=n, replace=False)
        qid = f"hq-{i}-{int(self.rng.integers(1 << 30))}"
        return {"v": 1, "type": "query", "query_id": qid, "ts": self.now,
                "user_id": int(self.rng.integers(1, 1000)),
                "context": {"device": "mobile", "page": "search", "hour": 12, "category": 1}, "text": "lamp",
                "candidates": {"listing_id": [self.listings[int(r)][0] for r in rows],
                               "relevance": [round(float(x), 3) for x in self.rng.random(n)]}}

    def _click(self, i: int) -> dict[str, Any]:
        lid, sid = self._pick()
        return {"v": 1, "type": "click", "click_id": f"hc-{i}-{int(self.rng.integers(1 << 30))}",
                "query_id": f"hq-none-{i}", "listing_id": lid, "shop_id": sid,
                "user_id": int(self.rng.integers(1, 1000)), "ts": self.now, "slot": 0, "price": 0.05,
                "shown_at": self.now - 1.0, "token": f"forged{int(self.rng.integers(1 << 30)):016d}"}

    def _purchase(self, i: int) -> dict[str, Any]:
        lid, sid = self._pick()
        return {"v": 1, "type": "purchase", "order_id": f"ho-{i}-{int(self.rng.integers(1 << 30))}",
                "user_id": 900_000 + i, "listing_id": lid, "shop_id": sid, "ts": self.now, "amount": 12.5}

    def _listing(self, i: int) -> dict[str, Any]:
        return {"v": 1, "type": "listing", "listing_id": _FAR_ID + i, "shop_id": self._pick()[1],
                "price": 9.5,
                "category": 1, "ts": self.now, "active": True}

    def _shop(self, i: int) -> dict[str, Any]:
        return {"v": 1, "type": "shop", "shop_id": _FAR_ID + i, "daily_budget": 10.0, "target_share": 0.1,
                "ts": self.now}

    def _template(self, topic: str) -> Callable[[int], dict[str, Any]]:
        """The valid event template of an input topic."""
        return {"queries": self._query, "clicks": self._click, "purchases": self._purchase,
                "listings": self._listing, "shops": self._shop}[topic]

    # -- kinds ---------------------------------------------------------------------------------------
    def make(self, kind: str, i: int) -> HostileRecord:
        """Record number ``i`` (ids stay unique across calls) of one kind."""
        topic, key, value, reason, decoder_only = _BUILDERS[kind](self, i)
        assert reason in REASONS, reason
        return HostileRecord(kind=kind, topic=topic, key=key, value=value, reason=reason,
                             decoder_only=decoder_only)

    def sized(self, topic: str, size: int, i: int, *, kind: str = "") -> HostileRecord:
        """A record on ``topic`` whose value is exactly ``size`` bytes: the topic's event with a ``pad``
        field filling it (to test records near the broker's maximum message size). Refused as
        ``too_large`` when ``size`` passes ``max_bytes``, else as ``unexpected_field``."""
        obj = self._template(topic)(i)
        rec = HostileRecord(kind=kind or f"{size}_bytes", topic=topic, key=_keyed(topic, obj, TOPICS[topic].key),
                            value=_dumps(obj), reason="", decoder_only=True)
        return self.resized(rec, size)

    def resized(self, rec: HostileRecord, size: int) -> HostileRecord:
        """``rec`` (a JSON object) with its ``pad`` field set so that its value is exactly ``size`` bytes;
        same key."""
        obj = {**orjson.loads(rec.value or b"{}"), "pad": ""}
        room = size - len(_dumps(obj))
        if room < 0:
            raise ValueError(f"a {rec.topic} record is at least {len(_dumps(obj))} bytes, asked for {size}")
        obj["pad"] = "x" * room
        value = _dumps(obj)
        assert len(value) == size
        reason = "too_large" if size > self.max_bytes else "unexpected_field"
        return HostileRecord(kind=rec.kind, topic=rec.topic, key=rec.key, value=value, reason=reason,
                             decoder_only=True)

    def poison(self, topic: str, i: int, *, marker: str) -> HostileRecord:
        """A record on ``topic`` carrying ``marker`` (in its id; catalog events in an extra ``note``), so
        that a worker started with ``BIDDER_FAULT_MARKER=marker`` raises while handling it, before it is
        decoded: refused as ``handler_error``."""
        id_field = {"queries": "query_id", "clicks": "click_id", "purchases": "order_id"}.get(topic, "note")
        obj = self._template(topic)(i)
        obj[id_field] = f"{obj.get(id_field, '')}-{marker}"  # catalog events have no text: an extra field
        return HostileRecord(kind=f"poison_{topic}", topic=topic, key=_keyed(topic, obj, TOPICS[topic].key),
                             value=_dumps(obj), reason="handler_error", decoder_only=False)

    def mix(self, n_each: int = 1, *, start: int = 0) -> list[HostileRecord]:
        """``n_each`` records of every kind, shuffled."""
        out = [self.make(k, start + j * len(KINDS) + n) for j in range(n_each) for n, k in enumerate(KINDS)]
        order = self.rng.permutation(len(out))
        return [out[int(x)] for x in order]


Built = tuple[str, bytes | None, bytes | None, str, bool]


def _keyed(topic: str, obj: dict[str, Any], field: str) -> bytes:
    return str(obj[field]).encode()


def _with(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**obj, **changes}


def _without(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != name}


def _k_truncated_json(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    raw = _dumps(c)
    return "clicks", _keyed("clicks", c, "shop_id"), raw[: len(raw) // 2], "invalid_json", True


def _k_invalid_utf8(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    raw = _dumps(_with(q, text="TEXT")).replace(b"TEXT", b"caf\xe9 \xff\xfe")
    return "queries", q["query_id"].encode(), raw, "invalid_utf8", True


def _k_utf8_bom(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    return "clicks", _keyed("clicks", c, "shop_id"), b"\xef\xbb\xbf" + _dumps(c), "invalid_utf8", True


def _k_root_array(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    return "clicks", _keyed("clicks", c, "shop_id"), _dumps([c]), "not_object", True


def _k_root_string(f: HostileFactory, i: int) -> Built:
    return "purchases", b"5", _dumps("buy listing 103 please"), "not_object", True


def _k_root_number(f: HostileFactory, i: int) -> Built:
    return "queries", f"hq-num-{i}".encode(), b"42", "not_object", True


def _k_missing_field(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    return "clicks", _keyed("clicks", c, "shop_id"), _dumps(_without(c, "user_id")), "missing_field", True


def _k_extra_field(f: HostileFactory, i: int) -> Built:
    p = f._purchase(i)
    raw = _dumps(_with(p, coupon="FREE"))
    return "purchases", _keyed("purchases", p, "shop_id"), raw, "unexpected_field", True


def _k_wrong_type_str_for_int(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    raw = _dumps(_with(c, shop_id=str(c["shop_id"])))
    return "clicks", _keyed("clicks", c, "shop_id"), raw, "wrong_type", True


def _k_wrong_type_bool(f: HostileFactory, i: int) -> Built:
    p = f._purchase(i)
    return "purchases", _keyed("purchases", p, "shop_id"), _dumps(_with(p, amount=True)), "wrong_type", True


def _k_wrong_type_candidates(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    q["candidates"]["listing_id"][0] = str(q["candidates"]["listing_id"][0])
    return "queries", q["query_id"].encode(), _dumps(q), "wrong_type", True


def _k_duplicate_key(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    raw = _dumps(c)[:-1] + b',"shop_id":' + str(c["shop_id"] + 1).encode() + b"}"
    return "clicks", _keyed("clicks", c, "shop_id"), raw, "duplicate_key", True


def _k_nan(f: HostileFactory, i: int) -> Built:
    p = f._purchase(i)
    raw = _dumps(_with(p, amount="AMT")).replace(b'"AMT"', b"NaN")
    # NaN is not JSON; the parser refuses the token itself (tests/test_decoding.py pins invalid_json)
    return "purchases", _keyed("purchases", p, "shop_id"), raw, "invalid_json", True


def _k_infinity(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    raw = _dumps(q).replace(b'"relevance":[', b'"relevance":[Infinity,', 1)
    return "queries", q["query_id"].encode(), raw, "invalid_json", True


def _k_1e400(f: HostileFactory, i: int) -> Built:
    p = f._purchase(i)
    raw = _dumps(_with(p, amount="AMT")).replace(b'"AMT"', b"1e400")
    return "purchases", _keyed("purchases", p, "shop_id"), raw, "non_finite", True


def _k_5000_digits(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    raw = _dumps(_with(c, user_id="UID")).replace(b'"UID"', b"7" * 5000)
    return "clicks", _keyed("clicks", c, "shop_id"), raw, "non_finite", True


def _k_int_over_int64(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    raw = _dumps(_with(c, user_id="UID")).replace(b'"UID"', b"9223372036854775808")
    return "clicks", _keyed("clicks", c, "shop_id"), raw, "out_of_range", True


def _k_deep_nesting(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    depth = 100_000
    raw = _dumps(_with(c, extra="DEEP")).replace(b'"DEEP"', b"[" * depth + b"]" * depth)
    return "clicks", _keyed("clicks", c, "shop_id"), raw, "too_deep", True


def _k_oversize(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    q["text"] = "x" * (f.max_bytes + 1000)
    return "queries", q["query_id"].encode(), _dumps(q), "too_large", True


def _k_negative_price(f: HostileFactory, i: int) -> Built:
    lst = _with(f._listing(i), price=-5.0)
    return "listings", _keyed("listings", lst, "listing_id"), _dumps(lst), "out_of_range", True


def _k_negative_budget(f: HostileFactory, i: int) -> Built:
    s = _with(f._shop(i), daily_budget=-1.0)
    return "shops", _keyed("shops", s, "shop_id"), _dumps(s), "out_of_range", True


def _k_negative_amount(f: HostileFactory, i: int) -> Built:
    p = _with(f._purchase(i), amount=-12.5)
    return "purchases", _keyed("purchases", p, "shop_id"), _dumps(p), "out_of_range", True


def _k_bad_enum(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    q["context"]["device"] = "smart-fridge"
    return "queries", q["query_id"].encode(), _dumps(q), "out_of_range", True


def _k_unknown_listings(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    n = len(q["candidates"]["listing_id"])
    q["candidates"]["listing_id"] = [_FAR_ID + 1000 * i + j for j in range(n)]
    return "queries", q["query_id"].encode(), _dumps(q), "no_known_candidates", False


def _k_no_candidates(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    q["candidates"] = {"listing_id": [], "relevance": []}
    return "queries", q["query_id"].encode(), _dumps(q), "no_candidates", True


def _k_too_many_candidates(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    n = f.max_candidates + 1
    q["candidates"] = {"listing_id": list(range(1, n + 1)), "relevance": [0.5] * n}
    return "queries", q["query_id"].encode(), _dumps(q), "too_many_candidates", True


def _k_duplicate_candidates(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    ids = q["candidates"]["listing_id"]
    ids[-1] = ids[0]
    return "queries", q["query_id"].encode(), _dumps(q), "duplicate_candidates", True


def _k_length_mismatch(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    q["candidates"]["relevance"].append(0.5)
    return "queries", q["query_id"].encode(), _dumps(q), "length_mismatch", True


def _k_future_ts(f: HostileFactory, i: int) -> Built:
    c = _with(f._click(i), ts=f.now + 30 * 86_400.0)
    return "clicks", _keyed("clicks", c, "shop_id"), _dumps(c), "future_timestamp", True


def _k_stale_ts(f: HostileFactory, i: int) -> Built:
    p = _with(f._purchase(i), ts=f.now - 40 * 86_400.0)
    return "purchases", _keyed("purchases", p, "shop_id"), _dumps(p), "stale_timestamp", True


def _k_zero_ts(f: HostileFactory, i: int) -> Built:
    c = _with(f._click(i), ts=0.0)
    return "clicks", _keyed("clicks", c, "shop_id"), _dumps(c), "out_of_range", True


def _k_null_key(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    return "clicks", None, _dumps(c), "wrong_key", False


def _k_wrong_key(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    return "queries", b"not-" + q["query_id"].encode(), _dumps(q), "wrong_key", False


def _k_empty_value(f: HostileFactory, i: int) -> Built:
    return "clicks", b"1", b"", "empty", True


def _k_null_value(f: HostileFactory, i: int) -> Built:
    return "purchases", b"1", None, "empty", True


def _k_control_chars(f: HostileFactory, i: int) -> Built:
    q = f._query(i)
    raw = _dumps(_with(q, text="TEXT")).replace(b"TEXT", b"lamp\x00\x07\x1b[31m")
    return "queries", q["query_id"].encode(), raw, "invalid_json", True


def _k_schema_version(f: HostileFactory, i: int) -> Built:
    c = _with(f._click(i), v=2)
    return "clicks", _keyed("clicks", c, "shop_id"), _dumps(c), "schema_version", True


def _k_wrong_event_type(f: HostileFactory, i: int) -> Built:
    c = f._click(i)
    return "purchases", b"1", _dumps(c), "wrong_event_type", True


def _k_forged_click_token(f: HostileFactory, i: int) -> Built:
    # a click on a query that never ran, its token made up: no key signed it
    c = f._click(i)
    return "clicks", _keyed("clicks", c, "shop_id"), _dumps(c), "bad_token", False


def _k_purchase_before_click(f: HostileFactory, i: int) -> Built:
    p = f._purchase(i)
    return "purchases", _keyed("purchases", p, "shop_id"), _dumps(p), "unattributed_purchase", False


def _k_purchase_wrong_shop(f: HostileFactory, i: int) -> Built:
    # a purchase naming (and keyed by) a shop that does not sell its listing
    p = _with(f._purchase(i), shop_id=_FAR_ID + i)
    return "purchases", _keyed("purchases", p, "shop_id"), _dumps(p), "shop_mismatch", False


_BUILDERS: dict[str, Callable[[HostileFactory, int], Built]] = {
    name.removeprefix("_k_"): fn for name, fn in sorted(globals().items()) if name.startswith("_k_")
}
KINDS: tuple[str, ...] = tuple(_BUILDERS)
"""every hostile kind, sorted by name"""
