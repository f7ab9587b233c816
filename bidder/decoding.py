"""Strict decoding: raw Kafka bytes in, a valid event or a :class:`Rejection` with a precise reason out.

Nothing is dropped: a rejection carries a stable ``reason`` code (for counting and alerting) and a
``detail`` a person can act on; the streaming layer writes it, with the original bytes and the source
topic/partition/offset, to ``dead-letters`` before the offset is committed.

Checks, in order: size limit, empty value, UTF-8 and JSON syntax (orjson: rejects NaN/Infinity,
numbers that overflow a double such as ``1e400``, nesting deeper than 1024), object root, duplicate
keys, schema version and type, then the event's fields (pydantic strict mode: no coercion, no extra or
missing fields, ranges), then cross-field rules (candidate columns of equal length, no duplicate
candidate ids, at most ``max_candidates``, timestamps within ``[now - max_age, now + max_future]``).

>>> limits = Limits()
>>> decode("shops", b'{"v":1,"type":"shop","shop_id":7,"daily_budget":-1,"target_share":0.1,"ts":5}',
...        now=5.0, limits=limits).reason
'out_of_range'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bidder.events import SCHEMA_VERSION, Click, Listing, Purchase, Query, Shop
from bidder.query.features import DEVICES, PAGES, QueryContext

__all__ = ["REASONS", "DecodedEvent", "Limits", "Rejection", "decode", "decoder_for"]

DecodedEvent = Query | Click | Purchase | Listing | Shop
INT64_MAX = 2**63 - 1

REASONS: dict[str, str] = {
    "empty": "the record has no value",
    "too_large": "the value is over the size limit",
    "invalid_utf8": "the value is not valid UTF-8",
    "invalid_json": "the value is not JSON (NaN and Infinity literals included)",
    "too_deep": "nesting deeper than the parser allows",
    "non_finite": "a number overflows a double (1e400, a 5000-digit integer); NaN/Infinity are not JSON",
    "not_object": "the JSON root is not an object",
    "duplicate_key": "an object has the same key twice",
    "schema_version": "unknown schema version",
    "wrong_event_type": "the event type does not belong on this topic",
    "missing_field": "a required field is missing",
    "unexpected_field": "a field the schema does not have",
    "wrong_type": "a field has the wrong JSON type",
    "out_of_range": "a value is outside its allowed range",
    "no_candidates": "a query without candidates",
    "too_many_candidates": "a query with more candidates than allowed",
    "duplicate_candidates": "a candidate listing appears twice",
    "length_mismatch": "candidate columns differ in length",
    "stale_timestamp": "the event time is too far in the past",
    "future_timestamp": "the event time is too far in the future",
    "unknown_topic": "no decoder for this topic",
    "wrong_key": "the record key is not the event's key field",
    "bad_token": "a click whose token does not sign its query, slot, listing, shop, price and auction time",
    "click_after_window": "a click later than the click window after its auction",
    "unattributed_purchase": "a purchase with no click by that buyer on that listing in the window",
    "shop_mismatch": "a purchase naming a shop that does not sell its listing",
    "no_known_candidates": "none of the query's candidates is in the catalog",
    "handler_error": "handling the record raised every time it was tried (a poison record)",
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused."""

    reason: str
    """one of :data:`REASONS`"""
    detail: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown rejection reason {self.reason!r}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Validation limits (from settings)."""

    max_bytes: int = 256_000
    max_candidates: int = 2000
    max_age_s: float = 86_400.0
    max_future_s: float = 300.0

    def for_catalog(self) -> Limits:
        """The same limits without the age check: compacted catalog records keep their old times."""
        return replace(self, max_age_s=float("inf"))


# ------------------------------------------------------------------------------------------------
# schemas (pydantic strict: no coercion between JSON types, no unknown fields)

Id = Annotated[int, Field(ge=0, le=INT64_MAX)]
Text = Annotated[str, Field(min_length=1, max_length=256)]
Ts = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Money = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Base(BaseModel):
    model_config = _STRICT
    v: int
    type: str


class _Context(BaseModel):
    model_config = _STRICT
    device: Literal["mobile", "desktop", "app"]
    page: Literal["search", "category", "market"]
    hour: Annotated[int, Field(ge=0, le=23)]
    category: Annotated[int, Field(ge=-1, le=1_000_000)]


class _Candidates(BaseModel):
    """Columns are checked with numpy in :func:`_query` (per-element pydantic costs ~250 us a query)."""

    model_config = _STRICT
    listing_id: list[Any]
    relevance: list[Any]


class _Query(_Base):
    type: Literal["query"]
    query_id: Text
    ts: Ts
    user_id: Id
    context: _Context
    text: Annotated[str, Field(max_length=1024)]
    candidates: _Candidates
    latency_budget_ms: Annotated[float, Field(gt=0, le=60_000, allow_inf_nan=False)] | None = None


class _Click(_Base):
    type: Literal["click"]
    click_id: Text
    query_id: Text
    listing_id: Id
    shop_id: Id
    user_id: Id
    ts: Ts
    slot: Annotated[int, Field(ge=0, le=1000)]
    price: Money
    shown_at: Ts
    token: Annotated[str, Field(min_length=1, max_length=64)]


class _Purchase(_Base):
    type: Literal["purchase"]
    order_id: Text
    user_id: Id
    listing_id: Id
    shop_id: Id
    ts: Ts
    amount: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Listing(_Base):
    type: Literal["listing"]
    listing_id: Id
    shop_id: Id
    price: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]
    category: Annotated[int, Field(ge=0, le=1_000_000)]
    ts: Ts
    active: bool = True


class _Shop(_Base):
    type: Literal["shop"]
    shop_id: Id
    daily_budget: Money
    target_share: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
    ts: Ts


_ERROR_REASON = {
    "missing": "missing_field",
    "extra_forbidden": "unexpected_field",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
    "string_too_short": "out_of_range",
    "string_too_long": "out_of_range",
    "literal_error": "out_of_range",
    "finite_number": "non_finite",
}

# a JSON string token directly followed by a colon is an object key
_KEY_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"\s*:')


def _count_keys(obj: Any) -> int:
    """Keys in parsed objects. Lists of scalars (candidate columns) are not walked element by element:
    a list whose ends are scalars counts 0, so a container hidden inside it makes the count differ
    from the token count and sends the event down the slow, exact path. Never hides a duplicate."""
    if isinstance(obj, dict):
        return len(obj) + sum(_count_keys(v) for v in obj.values() if isinstance(v, dict | list))
    if isinstance(obj, list) and obj and isinstance(obj[0], dict | list) | isinstance(obj[-1], dict | list):
        return sum(_count_keys(v) for v in obj if isinstance(v, dict | list))
    return 0


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKeyError(k)
        seen[k] = v
    return seen


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _parse(raw: bytes, limits: Limits) -> dict[str, Any] | Rejection:
    if len(raw) == 0:
        return Rejection("empty", "empty value")
    if len(raw) > limits.max_bytes:
        return Rejection("too_large", f"{len(raw)} bytes > limit {limits.max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if "UTF-8" in msg or "surrogate" in msg:
            return Rejection("invalid_utf8", msg)
        if "depth" in msg or "recursion" in msg:
            return Rejection("too_deep", msg)
        if "infinity" in msg.lower() or "nan" in msg.lower():
            return Rejection("non_finite", msg)
        return Rejection("invalid_json", msg)
    if not isinstance(obj, dict):
        return Rejection("not_object", f"root is a JSON {type(obj).__name__}, expected an object")
    # orjson keeps the last of duplicate keys silently; count key tokens to notice, then confirm
    if len(_KEY_TOKEN.findall(raw)) != _count_keys(obj):
        try:
            json.loads(raw, object_pairs_hook=_reject_duplicates)
        except _DuplicateKeyError as exc:
            return Rejection("duplicate_key", f"key {exc.key!r} appears more than once")
    return obj


def _validation_rejection(exc: ValidationError) -> Rejection:
    err = exc.errors()[0]
    etype = str(err["type"])
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    reason = _ERROR_REASON.get(etype, "wrong_type")
    return Rejection(reason, f"{loc}: {err['msg']}")


def _check_ts(ts: float, now: float, limits: Limits) -> Rejection | None:
    if ts < now - limits.max_age_s:
        return Rejection("stale_timestamp", f"ts {ts} is {now - ts:.0f}s old (> {limits.max_age_s:.0f}s)")
    if ts > now + limits.max_future_s:
        return Rejection("future_timestamp", f"ts {ts} is {ts - now:.0f}s ahead (> {limits.max_future_s:.0f}s)")
    return None


def _query(m: _Query, limits: Limits) -> Query | Rejection:
    ids, rel = m.candidates.listing_id, m.candidates.relevance
    if len(ids) != len(rel):
        return Rejection("length_mismatch", f"{len(ids)} listing ids but {len(rel)} relevance values")
    if not ids:
        return Rejection("no_candidates", "candidates are empty")
    if len(ids) > limits.max_candidates:
        return Rejection("too_many_candidates", f"{len(ids)} candidates > limit {limits.max_candidates}")
    if not set(map(type, ids)) <= {int}:
        return Rejection("wrong_type", "candidates.listing_id: every element must be an integer")
    if not set(map(type, rel)) <= {int, float}:
        return Rejection("wrong_type", "candidates.relevance: every element must be a number")
    try:
        listing_ids = np.asarray(ids, np.int64)
    except OverflowError:
        return Rejection("out_of_range", "candidates.listing_id: an id does not fit in 64 bits")
    relevance = np.asarray(rel, np.float64)
    if listing_ids.min() < 0:
        return Rejection("out_of_range", "candidates.listing_id: ids must be >= 0")
    if relevance.min() < 0:
        return Rejection("out_of_range", "candidates.relevance: values must be >= 0")
    uniq = np.unique(listing_ids)
    if len(uniq) != len(listing_ids):
        return Rejection("duplicate_candidates", f"{len(listing_ids) - len(uniq)} repeated listing ids")
    c = m.context
    return Query(
        query_id=m.query_id,
        ts=m.ts,
        user_id=m.user_id,
        context=QueryContext(device=c.device, page=c.page, hour=c.hour, category=c.category),
        text=m.text,
        listing_ids=listing_ids,
        relevance=relevance,
        latency_budget_ms=m.latency_budget_ms,
    )


_SCHEMAS: dict[str, tuple[str, type[_Base]]] = {
    "queries": ("query", _Query),
    "clicks": ("click", _Click),
    "purchases": ("purchase", _Purchase),
    "listings": ("listing", _Listing),
    "shops": ("shop", _Shop),
}


def _build(model: _Base, limits: Limits) -> DecodedEvent | Rejection:
    if isinstance(model, _Query):
        return _query(model, limits)
    fields = {k: getattr(model, k) for k in type(model).model_fields if k not in ("v", "type")}
    if isinstance(model, _Click):
        return Click(**fields)
    if isinstance(model, _Purchase):
        return Purchase(**fields)
    if isinstance(model, _Listing):
        return Listing(**fields)
    return Shop(**fields)


def decode(topic: str, raw: bytes | None, *, now: float, limits: Limits) -> DecodedEvent | Rejection:
    """Decode one record value from ``topic``; ``now`` is the wall clock used for timestamp checks."""
    if topic not in _SCHEMAS:
        return Rejection("unknown_topic", f"no decoder for topic {topic!r}")
    if raw is None:
        return Rejection("empty", "null value (tombstone); send active=false to withdraw a listing")
    parsed = _parse(raw, limits)
    if isinstance(parsed, Rejection):
        return parsed
    kind, schema = _SCHEMAS[topic]
    version = parsed.get("v")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        return Rejection("schema_version", f"v={version!r}, this bidder reads v={SCHEMA_VERSION}")
    if parsed.get("type") != kind:
        return Rejection("wrong_event_type", f"type={parsed.get('type')!r} on topic {topic!r}, expected {kind!r}")
    try:
        model = schema.model_validate(parsed)
    except ValidationError as exc:
        return _validation_rejection(exc)
    stale = _check_ts(float(parsed["ts"]), now, limits)
    if stale is not None:
        return stale
    return _build(model, limits)


def decoder_for(topic: str, limits: Limits) -> Callable[[bytes | None, float], DecodedEvent | Rejection]:
    """A one-argument-plus-clock decoder bound to a topic and limits."""

    def _decode(raw: bytes | None, now: float) -> DecodedEvent | Rejection:
        return decode(topic, raw, now=now, limits=limits)

    return _decode


# the Literal choices in _Context must follow the world's vocabulary
assert set(DEVICES) == {"mobile", "desktop", "app"}
assert set(PAGES) == {"search", "category", "market"}
