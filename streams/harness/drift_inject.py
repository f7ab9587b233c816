"""Drift injection: make one named feature drift from a given time, as upstream as possible.

A :class:`DriftInjection` names a feature of :data:`~bidder.query.features.FEATURE_SPEC`, a kind and an
amount, active for events with ``ts >= start_ts``:

==========  ====================================================================================
kind        effect
==========  ====================================================================================
scale       multiply by ``amount`` (the incident: another team's value arrives 10x)
shift       add ``amount`` reference standard deviations (the caller passes that ``std``)
missing     a share ``amount`` of rows becomes NaN (1.0: all); needs a generator below 1.0
remap       query understanding renumbers categories: category ``c`` -> ``(c + amount) % n``
==========  ====================================================================================

Entry points for the simulator (``streams/harness/simulate.py``), upstream of the bidder where the feature
has a source event, so the bidder's own decoding and gathering run on the drifted data:

- ``relevance`` scale/shift: :func:`inject_query` rewrites a :class:`~bidder.events.Query`'s
  candidate relevance (the decoder accepts any finite relevance >= 0; a shift is floored at 0).
- ``log_price`` scale/shift: :func:`inject_listing` rewrites a :class:`~bidder.events.Listing`'s price
  (scale multiplies the price, so ``log_price`` moves by ``ln amount``; shift multiplies it by
  ``exp(amount * std)``). The listings topic is compacted: re-publish every listing at ``start_ts``.
- ``category_match`` remap: :func:`inject_query` (through :func:`remap_context`) renumbers the
  query's category in its :class:`~bidder.query.features.QueryContext`.
- anything else: :func:`apply_to_matrix` changes the gathered ``(n, d)`` matrix before scoring.

:func:`upstream_source` says which path an injection takes. :func:`offline_stream` replays a seeded
world through :func:`~bidder.query.features.gather` offline (no Kafka), with an injection applied through
the same entry points; drift tests and ``bidder drift report --demo`` use it. Its feedback loop is
deliberately simple (the ``slots`` most relevant candidates are shown, clicks and purchases follow the
world's true laws, each click costs ``cpc``) so an injected feature does not leak into the others.

>>> inj = DriftInjection("log_price", "scale", 10.0, start_ts=100.0)
>>> x = np.ones((2, len(FEATURE_SPEC.names)), np.float32)
>>> apply_to_matrix(x, inj, now=99.0) is x, apply_to_matrix(x, inj, now=100.0)[0, 7]
(True, np.float32(10.0))
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from bidder.events import Listing, Query
from bidder.query.catalog import Catalog
from bidder.query.features import FEATURE_SPEC, Priors, QueryContext, gather
from bidder.query.rolling import RollingStats
from streams.harness.market import World, position_bias, sigmoid

__all__ = [
    "DriftInjection",
    "InjectionKind",
    "Served",
    "apply_to_matrix",
    "inject_listing",
    "inject_query",
    "offline_stream",
    "proxy_predictions",
    "remap_context",
    "upstream_source",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
InjectionKind = Literal["scale", "shift", "missing", "remap"]
_KINDS = ("scale", "shift", "missing", "remap")


@dataclass(frozen=True, slots=True)
class DriftInjection:
    """One feature drifting from ``start_ts`` on (see the module table for ``amount``)."""

    feature: str
    kind: InjectionKind
    amount: float
    start_ts: float

    def __post_init__(self) -> None:
        if self.feature not in FEATURE_SPEC.names:
            raise ValueError(f"unknown feature {self.feature!r}")
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if not math.isfinite(self.amount):
            raise ValueError("amount must be finite")
        if self.kind == "missing" and not 0.0 <= self.amount <= 1.0:
            raise ValueError("missing: amount is a share in [0, 1]")
        if self.kind == "remap" and self.feature != "category_match":
            raise ValueError("remap renumbers query categories: it drifts category_match only")

    def active(self, now: float) -> bool:
        return now >= self.start_ts


def upstream_source(injection: DriftInjection) -> Literal["query", "listing", "matrix"]:
    """Which entry point applies ``injection``.

    >>> upstream_source(DriftInjection("relevance", "scale", 10.0, 0.0))
    'query'
    >>> upstream_source(DriftInjection("relevance", "missing", 1.0, 0.0))
    'matrix'
    """
    f, k = injection.feature, injection.kind
    if (f == "relevance" and k in ("scale", "shift")) or k == "remap":
        return "query"
    if f == "log_price" and k in ("scale", "shift"):
        return "listing"
    return "matrix"


def _need_std(injection: DriftInjection, std: float | None) -> float:
    if std is None or not math.isfinite(std):
        raise ValueError(f"shift of {injection.feature} needs the reference std")
    return std


def remap_context(context: QueryContext, injection: DriftInjection, *, n_categories: int) -> QueryContext:
    """The context with its category renumbered (unknown ``-1`` stays unknown).

    >>> ctx = QueryContext(device="app", page="search", hour=3, category=22)
    >>> remap_context(ctx, DriftInjection("category_match", "remap", 5, 0.0), n_categories=24).category
    3
    """
    if context.category < 0:
        return context
    return replace(context, category=(context.category + round(injection.amount)) % n_categories)


def inject_query(
    query: Query, injection: DriftInjection, *, std: float | None = None, n_categories: int = 24
) -> Query:
    """The query as the drifted upstream would send it (unchanged before ``start_ts`` or off-path)."""
    if not injection.active(query.ts) or upstream_source(injection) != "query":
        return query
    if injection.kind == "remap":
        return replace(query, context=remap_context(query.context, injection, n_categories=n_categories))
    if injection.kind == "scale":
        rel = query.relevance * injection.amount
    else:
        rel = query.relevance + injection.amount * _need_std(injection, std)
    return replace(query, relevance=np.maximum(rel, 0.0))


def inject_listing(listing: Listing, injection: DriftInjection, *, std: float | None = None) -> Listing:
    """The listing with its price drifted (unchanged before ``start_ts`` or off-path)."""
    if not injection.active(listing.ts) or upstream_source(injection) != "listing":
        return listing
    factor = injection.amount if injection.kind == "scale" else math.exp(injection.amount * _need_std(injection, std))
    return replace(listing, price=round(listing.price * factor, 2))


def apply_to_matrix(
    x: F32,
    injection: DriftInjection,
    now: float,
    *,
    std: float | None = None,
    rng: np.random.Generator | None = None,
) -> F32:
    """``x`` with the injected feature's column drifted: a new array, or ``x`` itself when inactive."""
    if not injection.active(now):
        return x
    j = FEATURE_SPEC.index(injection.feature)
    out = x.copy()
    if injection.kind == "scale":
        out[:, j] *= np.float32(injection.amount)
    elif injection.kind == "shift":
        out[:, j] += np.float32(injection.amount * _need_std(injection, std))
    elif injection.kind == "missing":
        if injection.amount >= 1.0:
            out[:, j] = np.nan
        elif injection.amount > 0.0:
            if rng is None:
                raise ValueError("a partial missing injection needs a generator")
            out[rng.random(len(out)) < injection.amount, j] = np.nan
    else:
        raise ValueError("remap applies upstream: use inject_query")
    return out


def proxy_predictions(x: F32) -> dict[str, F32]:
    """A fixed stand-in CTR/CVR scorer over FEATURE_SPEC columns, so offline runs have predictions.

    Shaped like the world's true laws; NaN inputs give NaN outputs (as an MLP would).
    """
    c = {name: x[:, j].astype(np.float64) for j, name in enumerate(FEATURE_SPEC.names)}
    with np.errstate(divide="ignore", invalid="ignore"):
        ctr = sigmoid(
            -3.6
            + 2.2 * (c["relevance"] - 0.5)
            + 0.7 * c["category_match"]
            + 0.5 * np.log(np.maximum(c["ctr_smoothed"], 1e-6) / 0.02)
        )
        cvr = sigmoid(
            -2.6
            - 0.6 * (c["log_price"] - 3.2)
            + 0.5 * c["category_match"]
            + 0.5 * np.log(np.maximum(c["cvr_smoothed"], 1e-6) / 0.05)
        )
    return {"pctr": ctr.astype(np.float32), "pcvr": cvr.astype(np.float32)}


@dataclass(frozen=True, slots=True)
class Served:
    """One query's served feature rows and model outputs."""

    ts: float
    x: F32
    """``(n, FEATURE_SPEC.n_features)`` float32, as gathered (and injected)"""
    preds: dict[str, F32]


def offline_stream(
    world: World,
    *,
    n_queries: int,
    rng: np.random.Generator,
    injection: DriftInjection | None = None,
    std: float | None = None,
    start_ts: float = 1_699_999_200.0,
    dt_s: float = 0.25,
    n_candidates: int = 100,
    warmup: int = 3200,
    half_life_s: float = 30.0,
    slots: int = 24,
    cpc: float = 0.3,
    priors: Priors | None = None,
) -> Iterator[Served]:
    """Seeded served-feature stream: ``warmup`` unserved queries warm the rolling stats, then
    ``n_queries`` queries ``dt_s`` apart are gathered and yielded.

    The defaults draw 100 candidates a query (not 600) to keep tests fast; the warm-up spans ~4
    rolling half-lives so the stream is stationary when it starts. ``std`` is the injected feature's
    reference std (shift only). The same seed gives the same stream, injected or not, up to
    ``injection.start_ts``.
    """
    pri = priors or Priors()
    catalog = Catalog(capacity=len(world.listing_ids))
    for s, b, t in zip(world.shop_ids, world.shop_budget, world.shop_target_share, strict=True):
        catalog.upsert_shop(int(s), daily_budget=float(b), target_share=float(t))

    def publish(now: float) -> None:
        for i, lid in enumerate(world.listing_ids.tolist()):
            ev = Listing(
                listing_id=lid,
                shop_id=int(world.shop_ids[world.listing_shop[i]]),
                price=float(world.listing_price[i]),
                category=int(world.listing_category[i]),
                ts=now,
            )
            if injection is not None:
                ev = inject_listing(ev, injection, std=std)
            catalog.upsert_listing(ev.listing_id, shop_id=ev.shop_id, price=ev.price, category=ev.category)

    stats = RollingStats(half_life_s=half_life_s, capacity=len(world.listing_ids))
    bias = position_bias(range(slots))
    n_cat = world.config.n_categories
    republish = injection is not None and upstream_source(injection) == "listing"
    publish(start_ts - warmup * dt_s)
    buf = np.empty((n_candidates, FEATURE_SPEC.n_features), np.float32)
    for i in range(-warmup, n_queries):
        now = start_ts + i * dt_s
        if republish and injection is not None and injection.active(now):
            publish(now)
            republish = False
        draw = world.draw_query(rng, now=now, n_candidates=n_candidates)
        q = Query(
            query_id=f"q{i}",
            ts=now,
            user_id=draw.user_id,
            context=QueryContext(device=draw.device, page=draw.page, hour=draw.hour, category=draw.category),
            text=draw.query_text,
            listing_ids=draw.listing_ids,
            relevance=draw.relevance,
        )
        if i >= 0:
            if injection is not None:
                q = inject_query(q, injection, std=std, n_categories=n_cat)
            rows, _known = catalog.rows(q.listing_ids)
            x = gather(
                rows=rows,
                relevance=q.relevance,
                context=q.context,
                catalog=catalog,
                stats=stats,
                priors=pri,
                now=now,
                out=buf,
            ).copy()
            if injection is not None and upstream_source(injection) == "matrix":
                x = apply_to_matrix(x, injection, now, std=std, rng=rng)
            yield Served(ts=now, x=x, preds=proxy_predictions(x))
        # feedback follows the truth, never the served (possibly drifted) features
        top = np.argsort(-draw.relevance, kind="stable")[:slots]
        shown = world.listing_rows(draw.listing_ids[top])
        clicked = rng.random(len(top)) < draw.base_ctr[top] * bias[: len(top)]
        bought = clicked & (rng.random(len(top)) < draw.cvr[top])
        stats.record(shown, kind="impressions", now=now)
        if clicked.any():
            stats.record(shown[clicked], kind="clicks", now=now)
            stats.record(shown[clicked], kind="spend", now=now, amount=cpc)
        if bought.any():
            stats.record(shown[bought], kind="conversions", now=now)
