"""Drift injection: the pure entry points, the offline stream, and golden upstream injections.

The golden runs replay the seeded world through ``offline_stream`` with the injection applied where
the simulator applies it (Query relevance, re-published Listing prices, the QueryContext category);
queries 0-1999 fit the references (identical with or without injection: same seed, before
``start_ts``), the monitor watches from query 2900 and the drift starts at query 4000.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from bidder.events import Listing, Query
from bidder.monitoring.drift import PREDICTION_NAMES, DriftEvent, DriftMonitor, DriftSettings
from bidder.monitoring.profile import FeatureProfile, profile_matrix
from bidder.query.features import FEATURE_SPEC, QueryContext
from streams.harness.drift_inject import (
    DriftInjection,
    apply_to_matrix,
    inject_listing,
    inject_query,
    offline_stream,
    proxy_predictions,
    remap_context,
    upstream_source,
)
from streams.harness.market import World, WorldConfig

NAMES = FEATURE_SPEC.names
D = len(NAMES)
START = 1_699_999_200.0
DT = 0.25
REF_QUERIES = 2000
WATCH_FROM = 2900
INJECT_AT = 4000


@functools.cache
def world() -> World:
    return World.generate(WorldConfig(n_shops=60, n_listings=3000, n_users=3000), seed=7)


def _query(ts: float = 10.0, category: int = 4) -> Query:
    return Query(
        query_id="q1",
        ts=ts,
        user_id=1,
        context=QueryContext(device="mobile", page="search", hour=3, category=category),
        text="t",
        listing_ids=np.array([103, 203, 303], np.int64),
        relevance=np.array([0.0, 0.5, 1.0]),
    )


# --- the injection itself ---------------------------------------------------------------------------
def test_injection_validates_its_fields():
    with pytest.raises(ValueError, match="unknown feature"):
        DriftInjection("nope", "scale", 10.0, 0.0)
    with pytest.raises(ValueError, match="kind"):
        DriftInjection("relevance", "explode", 10.0, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share"):
        DriftInjection("relevance", "missing", 2.0, 0.0)
    with pytest.raises(ValueError, match="category_match"):
        DriftInjection("relevance", "remap", 3.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        DriftInjection("relevance", "shift", float("nan"), 0.0)


@pytest.mark.parametrize(
    ("feature", "kind", "source"),
    [
        ("relevance", "scale", "query"),
        ("relevance", "shift", "query"),
        ("relevance", "missing", "matrix"),
        ("log_price", "scale", "listing"),
        ("log_price", "shift", "listing"),
        ("log_price", "missing", "matrix"),
        ("category_match", "remap", "query"),
        ("ctr_smoothed", "scale", "matrix"),
    ],
)
def test_upstream_source(feature, kind, source):
    assert upstream_source(DriftInjection(feature, kind, 0.5, 0.0)) == source


def test_apply_to_matrix_changes_only_the_named_column_from_start_ts():
    rng = np.random.default_rng(0)
    x = rng.random((50, D)).astype(np.float32)
    before = x.copy()
    j = NAMES.index("log_spend")
    inj = DriftInjection("log_spend", "scale", 10.0, start_ts=5.0)
    assert apply_to_matrix(x, inj, now=4.9) is x
    out = apply_to_matrix(x, inj, now=5.0)
    np.testing.assert_array_equal(x, before)  # pure: the input is untouched
    np.testing.assert_allclose(out[:, j], 10 * x[:, j], rtol=1e-6)
    np.testing.assert_array_equal(np.delete(out, j, axis=1), np.delete(x, j, axis=1))
    shifted = apply_to_matrix(x, DriftInjection("log_spend", "shift", 1.0, 0.0), now=1.0, std=0.25)
    np.testing.assert_allclose(shifted[:, j], x[:, j] + 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="reference std"):
        apply_to_matrix(x, DriftInjection("log_spend", "shift", 1.0, 0.0), now=1.0)
    with pytest.raises(ValueError, match="upstream"):
        apply_to_matrix(x, DriftInjection("category_match", "remap", 3.0, 0.0), now=1.0)


def test_apply_to_matrix_missing():
    x = np.ones((2000, D), np.float32)
    j = NAMES.index("relevance")
    full = apply_to_matrix(x, DriftInjection("relevance", "missing", 1.0, 0.0), now=0.0)
    assert np.isnan(full[:, j]).all()
    assert not np.isnan(np.delete(full, j, axis=1)).any()
    part = DriftInjection("relevance", "missing", 0.2, 0.0)
    with pytest.raises(ValueError, match="generator"):
        apply_to_matrix(x, part, now=0.0)
    share = np.isnan(apply_to_matrix(x, part, now=0.0, rng=np.random.default_rng(1))[:, j]).mean()
    assert 0.17 < share < 0.23


def test_inject_query_relevance():
    q = _query()
    scaled = inject_query(q, DriftInjection("relevance", "scale", 10.0, 0.0))
    assert scaled.relevance.tolist() == [0.0, 5.0, 10.0]
    assert scaled.context == q.context
    assert scaled.listing_ids is q.listing_ids
    down = inject_query(q, DriftInjection("relevance", "shift", -1.0, 0.0), std=0.3)
    assert down.relevance.tolist() == pytest.approx([0.0, 0.2, 0.7])  # floored at 0: still a valid event
    assert inject_query(q, DriftInjection("relevance", "scale", 10.0, 10.5)) is q  # not started yet
    assert inject_query(q, DriftInjection("log_price", "scale", 10.0, 0.0)) is q  # not a query feature
    assert q.relevance.tolist() == [0.0, 0.5, 1.0]


def test_remap_renumbers_the_query_category():
    inj = DriftInjection("category_match", "remap", 5.0, 0.0)
    assert inject_query(_query(category=22), inj, n_categories=24).context.category == 3
    ctx = QueryContext(device="app", page="market", hour=1, category=-1)
    assert remap_context(ctx, inj, n_categories=24) is ctx  # unknown stays unknown
    perm = [
        remap_context(QueryContext("app", "market", 1, c), inj, n_categories=24).category for c in range(24)
    ]
    assert sorted(perm) == list(range(24))
    assert all(p != c for c, p in enumerate(perm))  # a permutation that moves every category


def test_inject_listing_price():
    lst = Listing(listing_id=103, shop_id=17, price=25.0, category=3, ts=100.0)
    assert inject_listing(lst, DriftInjection("log_price", "scale", 10.0, 100.0)).price == 250.0
    shifted = inject_listing(lst, DriftInjection("log_price", "shift", 1.0, 0.0), std=0.7)
    assert np.log(shifted.price) - np.log(25.0) == pytest.approx(0.7, abs=1e-3)
    assert inject_listing(lst, DriftInjection("log_price", "scale", 10.0, 100.5)) is lst
    assert inject_listing(lst, DriftInjection("relevance", "scale", 10.0, 0.0)) is lst


def test_proxy_predictions_are_probabilities_and_propagate_nan():
    x = np.stack([s.x for s in offline_stream(world(), n_queries=5, rng=np.random.default_rng(0), warmup=50)])
    x = x.reshape(-1, D)
    p = proxy_predictions(x)
    assert set(p) == set(PREDICTION_NAMES)
    for v in p.values():
        assert v.dtype == np.float32
        assert v.shape == (len(x),)
        assert ((v > 0) & (v < 1)).all()
    x[0, NAMES.index("log_price")] = np.nan
    q = proxy_predictions(x)
    assert np.isnan(q["pcvr"][0])
    assert not np.isnan(q["pctr"][0])


# --- the offline stream -----------------------------------------------------------------------------
def _short(injection: DriftInjection | None = None, seed: int = 3) -> list[np.ndarray]:
    served = offline_stream(
        world(), n_queries=40, rng=np.random.default_rng(seed), injection=injection, std=0.2, warmup=30
    )
    return [s.x for s in served]


def test_offline_stream_is_seeded_and_gathers_the_contract():
    a, b, c = _short(), _short(), _short(seed=4)
    assert all(x.shape == (100, D) and x.dtype == np.float32 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert np.isfinite(np.concatenate(a)).all()


@pytest.mark.parametrize(
    ("feature", "kind", "amount"),
    [("relevance", "scale", 10.0), ("log_price", "scale", 10.0), ("category_match", "remap", 7.0),
     ("log_spend", "shift", 2.0)],
)  # fmt: skip
def test_offline_injection_changes_only_its_feature_and_only_after_start(feature, kind, amount):
    base = _short()
    inj = DriftInjection(feature, kind, amount, start_ts=START + 20 * DT)
    drifted = _short(inj)
    j = NAMES.index(feature)
    for i, (x, y) in enumerate(zip(base, drifted, strict=True)):
        if i < 20:
            assert np.array_equal(x, y)
        else:
            assert np.array_equal(np.delete(x, j, axis=1), np.delete(y, j, axis=1))
            assert not np.array_equal(x[:, j], y[:, j])
    if kind == "scale" and feature == "log_price":
        # prices x10 upstream: log_price moves by ln 10 (cents rounding aside)
        np.testing.assert_allclose(drifted[-1][:, j] - base[-1][:, j], np.log(10.0), atol=1e-3)


# --- golden: upstream injections through the seeded stream ------------------------------------------
def golden(inj_feature: str, kind: str, amount: float, horizon: int) -> list[tuple[int, DriftEvent]]:
    inj = DriftInjection(inj_feature, kind, amount, start_ts=START + INJECT_AT * DT)  # type: ignore[arg-type]
    stream = offline_stream(
        world(), n_queries=INJECT_AT + horizon, rng=np.random.default_rng(11), injection=inj
    )
    ref_rows: list[np.ndarray] = []
    mon: DriftMonitor | None = None
    events: list[tuple[int, DriftEvent]] = []
    for i, served in enumerate(stream):
        if i < REF_QUERIES:
            ref_rows.append(served.x)
            continue
        if i < WATCH_FROM:
            continue
        if mon is None:
            x_ref = np.concatenate(ref_rows)
            preds = proxy_predictions(x_ref)
            mon = DriftMonitor(
                profile_matrix(x_ref, NAMES),
                tuple(FeatureProfile.from_values(k, v) for k, v in preds.items()),
                settings=DriftSettings(sample_rate=0.05),
                rng=np.random.default_rng(3),
                model_version="golden",
            )
        events += [(i - INJECT_AT, ev) for ev in mon.update(served.x, served.preds, now=served.ts)]
    return events


def _firsts(events: list[tuple[int, DriftEvent]]) -> dict[tuple[str, str, str], int]:
    out: dict[tuple[str, str, str], int] = {}
    for q, ev in events:
        if ev.kind == "alert":
            out.setdefault((ev.source, ev.feature, ev.statistic), q)
    return out


def test_relevance_ten_x_in_query_events_alerts_on_relevance_only():
    firsts = _firsts(golden("relevance", "scale", 10.0, horizon=2000))
    assert {f for s, f, _ in firsts if s == "feature"} == {"relevance"}
    assert firsts[("feature", "relevance", "scale")] == PINNED["relevance x10"]
    assert min(firsts.values()) >= 0  # nothing before the drift
    assert ("prediction", "pctr", "scale") in firsts  # the model output moves with it


def test_price_ten_x_in_listing_events_alerts_on_log_price_only():
    firsts = _firsts(golden("log_price", "scale", 10.0, horizon=1000))
    assert {f for s, f, _ in firsts if s == "feature"} == {"log_price"}
    # x10 prices shift log_price by ln 10 = 3.3 reference sds: the mean and the bins see it
    assert min(q for (s, _, _), q in firsts.items() if s == "feature") == PINNED["price x10"]
    assert firsts[("feature", "log_price", "mean")] == PINNED["price x10"]
    assert ("feature", "log_price", "scale") not in firsts  # a shift of the log, not a scale


def test_category_remap_alerts_on_category_match_only():
    firsts = _firsts(golden("category_match", "remap", 7.0, horizon=1000))
    assert {f for s, f, _ in firsts if s == "feature"} == {"category_match"}
    assert min(q for (s, _, _), q in firsts.items() if s == "feature") == PINNED["category remap"]
    assert firsts[("feature", "category_match", "mean")] == PINNED["category remap"]


# queries after the drift started until the first feature alert; the statistic that fired is checked
PINNED = {"relevance x10": 19, "price x10": 156, "category remap": 339}
