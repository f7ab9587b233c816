"""Event contracts: the frozen shapes that cross Kafka, and their JSON encodings.

Every event is a JSON object (UTF-8, orjson) with ``"v": SCHEMA_VERSION``. Candidates travel as
columns (``{"listing_id": [...], "relevance": [...]}``) because a query carries up to 2000 of them
and the hot path wants arrays, not objects. Decoding with validation lives in ``bidder.decoding``;
this module only declares the shapes and encodes them.

Topic keys come from the one topic table, :mod:`bidder.topics` (e.g. clicks by ``shop_id``: money is
owned by one partition per shop).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from bidder.query.features import QueryContext

__all__ = [
    "SCHEMA_VERSION",
    "AuctionOutcome",
    "Click",
    "Listing",
    "Purchase",
    "Query",
    "Shop",
    "Winner",
    "encode",
    "to_json",
]

SCHEMA_VERSION = 1
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, eq=False)
class Query:
    """A buyer's search with the candidates retrieval found for it."""

    query_id: str
    ts: float
    """epoch seconds when the search happened"""
    user_id: int
    context: QueryContext
    text: str
    listing_ids: I64
    """candidate listing ids, unique, at least one and at most ``max_candidates``"""
    relevance: F64
    """retrieval relevance per candidate, in [0, 1]"""
    latency_budget_ms: float | None = None
    """how long the caller will wait for the auction; ``None`` means the worker's default"""


@dataclass(frozen=True, slots=True)
class Click:
    """A buyer clicked an ad; ``click_id`` makes a resend harmless (charged at most once).

    ``slot``, ``price``, ``shown_at`` and ``token`` are copied from the winner as the outcome showed it (the
    click URL): the token signs them with the query, listing and shop (``bidder/clicks/click_token.py``)."""

    click_id: str
    query_id: str
    listing_id: int
    shop_id: int
    user_id: int
    ts: float
    slot: int
    price: float
    """the price the outcome said a click costs (GSP)"""
    shown_at: float
    """the auction's time (the outcome's ``ts``)"""
    token: str

    @classmethod
    def of_winner(cls, outcome: Mapping[str, Any], winner: Mapping[str, Any], *, click_id: str, user_id: int,
                  ts: float) -> Click:
        """A click on ``winner`` of ``outcome`` (both as on the ``auctions`` topic): what a buyer's browser
        sends back from the click URL, token included.

        >>> out = {"query_id": "q1", "ts": 10.0, "winners": [{"slot": 0, "listing_id": 5, "shop_id": 7,
        ...        "price": 0.3, "click_token": "t0k"}]}
        >>> c = Click.of_winner(out, out["winners"][0], click_id="c1", user_id=2, ts=11.0)
        >>> (c.query_id, c.listing_id, c.shop_id, c.slot, c.price, c.shown_at, c.token)
        ('q1', 5, 7, 0, 0.3, 10.0, 't0k')
        """
        return cls(click_id=click_id, query_id=str(outcome["query_id"]), listing_id=int(winner["listing_id"]),
                   shop_id=int(winner["shop_id"]), user_id=user_id, ts=ts, slot=int(winner["slot"]),
                   price=float(winner["price"]), shown_at=float(outcome["ts"]), token=str(winner["click_token"]))


@dataclass(frozen=True, slots=True)
class Purchase:
    """A buyer bought a listing of a shop; attributed to that buyer's last click on it within the window.

    Keyed by ``shop_id`` (as clicks are): the worker that decides the shop's clicks attributes its orders."""

    order_id: str
    user_id: int
    listing_id: int
    shop_id: int
    ts: float
    amount: float


@dataclass(frozen=True, slots=True)
class Listing:
    """Catalog entry (compacted topic, keyed by listing id). ``active=False`` withdraws it."""

    listing_id: int
    shop_id: int
    price: float
    category: int
    ts: float
    active: bool = True


@dataclass(frozen=True, slots=True)
class Shop:
    """A seller's ad settings (compacted topic, keyed by shop id)."""

    shop_id: int
    daily_budget: float
    """currency units a day; spend never exceeds it"""
    target_share: float
    """share of a sale's price the seller will pay for ads that lead to it, (0, 1]"""
    ts: float


class Winner(NamedTuple):
    """One slot of an auction outcome.

    A named tuple rather than a frozen dataclass: the hot path builds 24 per query, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) took ~0.6 us each here, a third of
    the auction stage; a named tuple is built in one C call and is just as immutable.
    """

    slot: int
    listing_id: int
    shop_id: int
    pctr: float
    pcvr: float
    bid: float
    price: float
    """charged if clicked (GSP): reserve <= price <= bid"""
    features: tuple[float, ...] = ()
    """the feature vector exactly as served (for labels)"""

    def wire(self) -> dict[str, Any]:
        """The winner as it is on the ``auctions`` topic (inside an outcome's ``winners``)."""
        return {
            "slot": self.slot,
            "listing_id": self.listing_id,
            "shop_id": self.shop_id,
            # model outputs and features are float32: written at float32's shortest repr
            "pctr": np.float32(self.pctr),
            "pcvr": np.float32(self.pcvr),
            "bid": self.bid,
            "price": self.price,
            "features": np.asarray(self.features, np.float32),
        }

    @classmethod
    def from_wire(cls, w: dict[str, Any]) -> Winner:
        """A winner read back from an outcome on the topic, without its feature vector (readers of
        ``auctions`` keep a click's price, not what the models saw; ``labels`` carry the features).

        >>> w = Winner(0, 103, 7, 0.1, 0.05, 0.4, 0.25, (1.0, 2.0))
        >>> Winner.from_wire(orjson.loads(orjson.dumps(w.wire(), option=orjson.OPT_SERIALIZE_NUMPY)))
        Winner(slot=0, listing_id=103, shop_id=7, pctr=0.1, pcvr=0.05, bid=0.4, price=0.25, features=())
        """
        return cls(int(w["slot"]), int(w["listing_id"]), int(w["shop_id"]), float(w["pctr"]), float(w["pcvr"]),
                   float(w.get("bid", 0.0)), float(w["price"]))


@dataclass(frozen=True, slots=True)
class AuctionOutcome:
    """What the bidder decided for one query."""

    query_id: str
    ts: float
    """time of the query"""
    user_id: int
    winners: tuple[Winner, ...]
    model_versions: dict[str, str]
    timings_ms: dict[str, float]
    """stage timings: gather, score, bid, auction, total"""
    n_candidates: int
    n_unknown: int = 0
    """candidates whose listing the catalog does not know (skipped)"""
    extra: dict[str, Any] = field(default_factory=dict)


def to_json(obj: Any) -> Any:
    """The event as JSON-ready data (numpy values inside; dump with ``OPT_SERIALIZE_NUMPY``)."""
    if isinstance(obj, Query):
        return {
            "v": SCHEMA_VERSION,
            "type": "query",
            "query_id": obj.query_id,
            "ts": obj.ts,
            "user_id": obj.user_id,
            "context": {
                "device": obj.context.device,
                "page": obj.context.page,
                "hour": obj.context.hour,
                "category": obj.context.category,
            },
            "text": obj.text,
            "candidates": {
                "listing_id": obj.listing_ids.tolist(),
                "relevance": obj.relevance.tolist(),
            },
            **({} if obj.latency_budget_ms is None else {"latency_budget_ms": obj.latency_budget_ms}),
        }
    if isinstance(obj, AuctionOutcome):
        return {
            "v": SCHEMA_VERSION,
            "type": "auction",
            "query_id": obj.query_id,
            "ts": obj.ts,
            "user_id": obj.user_id,
            "winners": [w.wire() for w in obj.winners],
            "model_versions": obj.model_versions,
            "timings_ms": obj.timings_ms,
            "n_candidates": obj.n_candidates,
            "n_unknown": obj.n_unknown,
            **obj.extra,
        }
    kind = type(obj).__name__.lower()
    out = {"v": SCHEMA_VERSION, "type": kind}
    out.update({k: getattr(obj, k) for k in obj.__slots__})
    return out


def encode(event: Query | Click | Purchase | Listing | Shop | AuctionOutcome) -> bytes:
    """The event's JSON bytes (what goes on the topic).

    >>> encode(Shop(shop_id=7, daily_budget=50.0, target_share=0.1, ts=1.0))
    b'{"v":1,"type":"shop","shop_id":7,"daily_budget":50.0,"target_share":0.1,"ts":1.0}'
    """
    return orjson.dumps(to_json(event), option=orjson.OPT_SERIALIZE_NUMPY)
