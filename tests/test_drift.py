"""Drift monitor: detector units, alert episodes, state, and golden firing points on a seeded stream.

The golden stream is the real world served offline (``offline_stream``: catalog + rolling stats +
``features.gather``), 100 candidates a query instead of 600 to keep the suite fast; sampling 5% of
them gives 5 rows a query, about what the production default (1% of 600) gives, so queries-to-alert
here are comparable to (slightly slower than) production. Queries 0-1999 fit the references, the
monitor watches from query 2000, injections start at query 4000 (``q`` counts queries from there).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.monitoring.drift import (
    PREDICTION_NAMES,
    STATISTICS,
    DriftEvent,
    DriftMonitor,
    DriftSettings,
    column_drift,
)
from bidder.monitoring.profile import FeatureProfile, profile_matrix
from bidder.query.features import FEATURE_SPEC
from streams.harness.drift_inject import DriftInjection, apply_to_matrix, offline_stream, proxy_predictions
from streams.harness.market import World, WorldConfig

N_CANDIDATES = 100
N_QUERIES = 10_000
REF_QUERIES = 2000
WATCH_FROM = 2000
INJECT_AT = 4000
GOLDEN = DriftSettings(sample_rate=0.05)
NAMES = FEATURE_SPEC.names
D = len(NAMES)


# --- the seeded stream ------------------------------------------------------------------------------
@functools.cache
def stationary() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    world = World.generate(WorldConfig(n_shops=60, n_listings=3000, n_users=3000), seed=7)
    served = list(
        offline_stream(world, n_queries=N_QUERIES, rng=np.random.default_rng(11), n_candidates=N_CANDIDATES)
    )
    x = np.stack([s.x for s in served])
    ts = np.array([s.ts for s in served])
    preds = {k: np.stack([s.preds[k] for s in served]) for k in PREDICTION_NAMES}
    return x, ts, preds


@functools.cache
def references() -> tuple[tuple[FeatureProfile, ...], tuple[FeatureProfile, ...]]:
    x, _, preds = stationary()
    refs = profile_matrix(x[:REF_QUERIES].reshape(-1, D), NAMES)
    prefs = tuple(FeatureProfile.from_values(k, preds[k][:REF_QUERIES].ravel()) for k in PREDICTION_NAMES)
    return refs, prefs


def replay(
    *injections: DriftInjection,
    start: int = WATCH_FROM,
    stop: int = N_QUERIES,
    until: int | None = None,
) -> tuple[DriftMonitor, list[tuple[int, DriftEvent]]]:
    """Feed queries ``start..stop``, drifted by ``injections`` (from their start until ``until``)."""
    x, ts, preds = stationary()
    refs, prefs = references()
    mon = DriftMonitor(refs, prefs, settings=GOLDEN, rng=np.random.default_rng(3), model_version="golden")
    miss_rng = np.random.default_rng(5)
    events: list[tuple[int, DriftEvent]] = []
    for i in range(start, stop):
        xi, pi = x[i], {k: v[i] for k, v in preds.items()}
        if until is None or i < until:
            for inj in injections:
                std = refs[NAMES.index(inj.feature)].std
                xi = apply_to_matrix(xi, inj, float(ts[i]), std=std, rng=miss_rng)
            if any(inj.active(float(ts[i])) for inj in injections):
                pi = proxy_predictions(xi)
        events += [(i - INJECT_AT, ev) for ev in mon.update(xi, pi, now=float(ts[i]))]
    return mon, events


def injection(feature: str, kind: str, amount: float) -> DriftInjection:
    _, ts, _ = stationary()
    return DriftInjection(feature, kind, amount, start_ts=float(ts[INJECT_AT]))  # type: ignore[arg-type]


def first_alerts(events: list[tuple[int, DriftEvent]], source: str = "feature") -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for q, ev in events:
        if ev.kind == "alert" and ev.source == source:
            out.setdefault((ev.feature, ev.statistic), q)
    return out


# --- golden: stationary traffic ---------------------------------------------------------------------
def test_stationary_stream_raises_no_alert():
    mon, events = replay()
    assert mon.n_seen == (N_QUERIES - WATCH_FROM) * N_CANDIDATES == 800_000  # >= 50k served vectors
    assert events == []  # false alarms: 0
    stats = mon.statistics
    assert set(stats) == set(NAMES) | set(PREDICTION_NAMES)
    # the margins, not just the verdict: every statistic sits far inside its threshold
    assert max(d.psi for d in stats.values()) < GOLDEN.psi_threshold / 5
    assert max(d.js for d in stats.values()) < GOLDEN.js_threshold / 2
    scales = [d.scale for d in stats.values() if not math.isnan(d.scale)]
    assert 0.8 < min(scales) <= max(scales) < 1.25


# --- golden: 10x scale of one feature ---------------------------------------------------------------
# queries after the injection until the first alert on that feature (the statistic that fired first)
SCALE_10X = {
    "relevance": (19, "scale"),
    "ctr_smoothed": (9, "mean"),
    "cvr_smoothed": (9, "scale"),
    "log_impressions": (19, "scale"),
    "log_clicks": (468, "mean"),  # most listings have no click at ~1.7 % CTR: only non-zero rows can move
    "impression_recency": (19, "scale"),
    "click_recency": (19, "scale"),
    "log_price": (19, "scale"),
    "category_match": (19, "scale"),
    "device_mobile": (19, "scale"),
    "device_desktop": (50, "scale"),
    "device_app": (96, "scale"),
    "page_search": (19, "scale"),
    "page_category": (85, "scale"),
    "page_market": (136, "scale"),
    "log_spend": (477, "mean"),  # the same: spend only follows clicks
    "hour_sin": (19, "scale"),  # seasonal: judged by magnitude, a window holds one hour
    "hour_cos": (19, "scale"),
}


def test_every_feature_is_covered():
    refs, _ = references()
    constant = {p.name for p in refs if p.q99 - p.q01 <= 0.0}
    assert constant == {"hour_sin", "hour_cos"}  # the golden stream stays inside one hour
    assert constant <= set(GOLDEN.seasonal)  # ... and those are judged by magnitude, not spread
    assert set(SCALE_10X) == set(NAMES)


def test_ten_x_scale_of_any_feature_alerts_within_2000_queries():
    # columns are judged independently and sampling does not look at values, so scaling every
    # feature in one replay gives each the firing point it has alone (checked below for three)
    _, events = replay(*(injection(f, "scale", 10.0) for f in SCALE_10X), start=INJECT_AT - 1100,
                       stop=INJECT_AT + 600)  # fmt: skip
    firsts = first_alerts(events)
    got = {f: min(q for (g, _), q in firsts.items() if g == f) for f in {g for g, _ in firsts}}
    assert got == {f: q for f, (q, _) in SCALE_10X.items()}
    for f, (q, stat) in SCALE_10X.items():
        assert firsts[(f, stat)] == q <= 2000


@pytest.mark.parametrize("feature", ["relevance", "log_price", "page_market", "hour_sin"])
def test_ten_x_scale_alerts_within_2000_queries_naming_only_that_feature(feature):
    _, events = replay(injection(feature, "scale", 10.0), start=INJECT_AT - 1100, stop=INJECT_AT + 2000)
    firsts = first_alerts(events)
    assert {f for f, _ in firsts} == {feature}
    q, stat = SCALE_10X[feature]
    assert min(firsts.values()) == q <= 2000
    assert firsts[(feature, stat)] == q
    assert all(ev.kind == "alert" for _, ev in events)  # no flapping while the drift lasts
    first = next(ev for _, ev in events if ev.source == "feature")
    assert (first.statistic, first.value > GOLDEN.scale_factor) == ("scale", True)
    assert first.threshold == GOLDEN.scale_factor
    assert first.window == GOLDEN.window
    assert first.model_version == "golden"
    _, ts, _ = stationary()
    assert first.ts == ts[INJECT_AT + q]
    assert 200.0 < first.window_s < 300.0  # 5000 rows at 5 rows/query, 4 queries/s


# --- golden: one-standard-deviation mean shift -------------------------------------------------------
SHIFT_1SD = {
    "relevance": (468, "js"),
    "log_price": (528, "js"),
    "ctr_smoothed": (222, "js"),
    "device_mobile": (446, "mean"),  # values move inside their one-hot bins: only the mean sees it
    "category_match": (498, "mean"),
}


@pytest.mark.parametrize("feature", sorted(SHIFT_1SD))
def test_one_std_shift_alerts_within_5000_queries(feature):
    _, events = replay(injection(feature, "shift", 1.0), start=INJECT_AT - 1100, stop=INJECT_AT + 1000)
    firsts = first_alerts(events)
    assert {f for f, _ in firsts} == {feature}
    q, stat = SHIFT_1SD[feature]
    assert min(firsts.values()) == q <= 5000
    assert firsts[(feature, stat)] == q


# --- golden: missing values, predictions, recovery ---------------------------------------------------
def test_missing_values_alert_on_the_feature_and_the_prediction_it_feeds():
    for share, pinned in ((1.0, 50), (0.2, 242)):
        _, events = replay(
            injection("log_price", "missing", share), start=INJECT_AT - 1100, stop=INJECT_AT + 400
        )
        assert first_alerts(events) == {("log_price", "missing"): pinned}
        assert first_alerts(events, "prediction") == {("pcvr", "missing"): pinned}


def test_an_episode_recovers_once_the_drift_is_gone():
    inj = injection("relevance", "scale", 10.0)
    _, events = replay(inj, start=INJECT_AT - 1100, stop=INJECT_AT + 1400, until=INJECT_AT + 300)
    seq = [(q, ev.kind, ev.statistic) for q, ev in events if ev.source == "feature"]
    kinds = {(k, s) for _, k, s in seq}
    assert {("alert", s) for s in ("scale", "mean", "psi", "js")} <= kinds
    assert {("recovered", s) for s in ("scale", "mean", "psi", "js")} <= kinds
    # one alert then one recovery per statistic, recovery after the drift stopped
    for s in ("scale", "mean", "psi", "js"):
        per = [(q, k) for q, k, st_ in seq if st_ == s]
        assert [k for _, k in per] == ["alert", "recovered"]
        assert per[1][0] > 300
    assert seq[0] == (19, "alert", "scale")
    assert max(q for q, k, _ in seq if k == "recovered") == 1291


# --- detector units ---------------------------------------------------------------------------------
def _profile(values: np.ndarray, name: str = "x") -> FeatureProfile:
    return FeatureProfile.from_values(name, values)


def _col(values: np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(values, np.float32))


@pytest.mark.parametrize(
    ("label", "draw"),
    [
        ("positive", lambda r, n: r.lognormal(3.0, 0.7, n)),
        ("centred on 0", lambda r, n: r.normal(0.0, 1.0, n)),
        ("negative", lambda r, n: r.normal(-5.0, 1.0, n)),
        ("one-hot p=0.3", lambda r, n: (r.random(n) < 0.3).astype(float)),
    ],
)
def test_scale_ratio_reads_the_factor_whatever_the_location(label, draw):
    rng = np.random.default_rng(0)
    ref = _profile(draw(rng, 20_000))
    same = column_drift(_col(draw(rng, 5000)), ref)
    assert 0.8 < same.scale < 1.25, label
    assert same.psi < 0.02
    assert same.js < 0.1
    assert abs(same.mean) < 0.1
    for k in (10.0, 0.1):
        d = column_drift(_col(k * draw(rng, 5000)), ref)
        assert d.scale == pytest.approx(k, rel=0.2), label


def test_scale_fires_when_a_few_percent_of_the_window_is_scaled():
    rng = np.random.default_rng(1)
    ref = _profile(rng.normal(3.2, 0.7, 20_000))
    live = rng.normal(3.2, 0.7, 5000)
    live[:150] *= 10  # 3% of the window
    assert column_drift(_col(live), ref).scale > 5.0


def test_constant_reference_is_not_judged_for_scale_or_mean():
    ref = _profile(np.full(1000, 0.5))
    d = column_drift(_col(np.full(100, 5.0)), ref)
    assert math.isnan(d.scale)
    assert math.isnan(d.mean)
    assert d.psi == pytest.approx(0.0)
    assert d.missing == 0.0


def test_missing_share_counts_nan_and_inf():
    ref = _profile(np.arange(100.0))
    live = np.array([1.0, np.nan, np.inf, 3.0], np.float32)
    mon = DriftMonitor((ref,), settings=DriftSettings(sample_rate=1.0, window=4, min_count=4,
                                                      min_finite=1, eval_every=1),
                       rng=np.random.default_rng(0))  # fmt: skip
    events = mon.update(live[:, None], None, now=0.0)
    assert mon.statistics["x"].missing == 0.5
    assert [(e.statistic, e.value, e.threshold) for e in events if e.statistic == "missing"] == [
        ("missing", 0.5, 0.05)
    ]


def test_all_missing_window_only_reports_missing():
    ref = _profile(np.arange(100.0))
    d = column_drift(np.full(50, np.nan, np.float32), ref, min_finite=10)
    assert d.missing == 1.0
    assert d.n_finite == 0
    assert all(math.isnan(d.get(s)) for s in ("psi", "js", "scale", "mean"))


@settings(max_examples=60, deadline=None)
@given(
    ref=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=200),
    live=st.lists(st.floats(-1e7, 1e7), min_size=1, max_size=200),
)
def test_psi_is_nonnegative_and_js_is_a_bounded_distance(ref, live):
    p = _profile(np.asarray(ref))
    d = column_drift(_col(np.asarray(live)), p)
    assert d.psi >= -1e-12
    assert 0.0 <= d.js <= 1.0 + 1e-9
    same = column_drift(np.sort(np.asarray(ref, np.float64)), p)
    assert same.psi == pytest.approx(0.0, abs=1e-9)
    assert same.js == pytest.approx(0.0, abs=1e-6)


# --- monitor mechanics ------------------------------------------------------------------------------
SMALL = DriftSettings(sample_rate=1.0, window=400, min_count=200, min_finite=50, eval_every=50)


def _monitor(cfg: DriftSettings = SMALL) -> tuple[DriftMonitor, np.random.Generator]:
    rng = np.random.default_rng(0)
    ref = _profile(rng.normal(0.0, 1.0, 10_000), "a")
    ref_b = _profile(rng.normal(5.0, 2.0, 10_000), "b")
    pred = _profile(rng.beta(2, 20, 10_000), "pctr")
    mon = DriftMonitor((ref, ref_b), (pred,), settings=cfg, rng=np.random.default_rng(1), model_version="v7")
    return mon, rng


def _batch(rng: np.random.Generator, n: int = 100, a_scale: float = 1.0) -> tuple[np.ndarray, dict]:
    x = np.stack([a_scale * rng.normal(0.0, 1.0, n), rng.normal(5.0, 2.0, n)], axis=1).astype(np.float32)
    return x, {"pctr": rng.beta(2, 20, n).astype(np.float32)}


def test_one_event_per_episode_with_hysteresis():
    mon, rng = _monitor()
    log: list[tuple[int, str, str, str]] = []
    for step in range(40):
        drifting = 8 <= step < 20
        x, p = _batch(rng, a_scale=10.0 if drifting else 1.0)
        log += [(step, e.kind, e.feature, e.statistic) for e in mon.update(x, p, now=float(step))]
    assert {f for _, _, f, _ in log} == {"a"}
    for s in ("scale", "psi", "js"):
        assert [k for _, k, _, st_ in log if st_ == s] == ["alert", "recovered"]
    alert_at = {st_: t for t, k, _, st_ in log if k == "alert"}
    assert alert_at["scale"] == 8  # the first drifted batch already moves the spread
    assert mon.alerting == frozenset()


def test_nothing_is_judged_before_min_count():
    mon, rng = _monitor()
    x, p = _batch(rng, n=199, a_scale=10.0)
    assert mon.update(x, p, now=0.0) == []
    assert mon.statistics == {}
    assert [e.statistic for e in mon.update(*_batch(rng, n=1, a_scale=10.0), now=1.0)] != []


def test_predictions_are_monitored_and_tagged():
    mon, rng = _monitor()
    for step in range(6):
        x, p = _batch(rng)
        if step >= 2:
            p = {"pctr": np.minimum(p["pctr"] * 8, 1.0)}
        events = mon.update(x, p, now=float(step))
        if events:
            break
    assert {(e.source, e.feature) for e in events} == {("prediction", "pctr")}
    assert ("pctr", "psi") in mon.alerting


def test_seasonal_features_judge_only_missing_and_upward_scale():
    day = np.sin(2 * np.pi * (np.arange(24 * 60) / 60.0) / 24.0)
    ref = _profile(day, "hour_sin")
    cfg = DriftSettings(sample_rate=1.0, window=400, min_count=200, eval_every=50)
    mon = DriftMonitor((ref,), settings=cfg, rng=np.random.default_rng(0))
    one_hour = np.full((400, 1), np.sin(2 * np.pi * 3 / 24), np.float32)
    assert mon.update(one_hour, None, now=0.0) == []  # a single hour of a whole day: not drift
    assert mon.statistics["hour_sin"].psi > cfg.psi_threshold
    events = mon.update(10 * one_hour, None, now=1.0)
    assert [(e.statistic, e.value > 5) for e in events] == [("scale", True)]
    plain = DriftMonitor((FeatureProfile.from_values("x", day),), settings=cfg, rng=np.random.default_rng(0))
    assert {e.statistic for e in plain.update(one_hour, None, now=0.0)} >= {"psi", "scale"}


def test_sampling_follows_the_rate_and_the_injected_generator():
    def run(seed: int) -> tuple[int, list[float]]:
        mon, rng = _monitor(DriftSettings(sample_rate=0.1, window=400, min_count=200))
        mon.rng = np.random.default_rng(seed)
        for step in range(30):
            mon.update(*_batch(rng), now=float(step))
        return mon.n_sampled, mon.live_values("a").tolist()

    n, vals = run(4)
    assert 230 < n < 370  # 3000 rows at 10%: 300 +- 4 sd
    assert run(4) == (n, vals)
    assert run(5)[1] != vals


def test_update_rejects_the_wrong_width():
    mon, _ = _monitor()
    with pytest.raises(ValueError, match=r"expected \(n, 2\)"):
        mon.update(np.zeros((3, 5), np.float32), None, now=0.0)


def test_gauges_give_every_statistic_of_every_column():
    mon, rng = _monitor()
    for step in range(3):
        mon.update(*_batch(rng), now=float(step))
    g = mon.gauges()
    assert set(g) == {"a", "b", "pctr"}
    assert all(set(v) == set(STATISTICS) for v in g.values())
    assert g["b"]["scale"] == pytest.approx(1.0, abs=0.2)


def test_snapshot_survives_json_and_continues_identically():
    mon, rng = _monitor()
    for step in range(10):
        mon.update(*_batch(rng, a_scale=10.0 if step > 4 else 1.0), now=float(step))
    snap = orjson.loads(orjson.dumps(mon.snapshot()))
    twin = DriftMonitor.from_snapshot(snap, rng=np.random.default_rng(99))
    mon.rng = np.random.default_rng(99)
    assert twin.alerting == mon.alerting != frozenset()
    assert twin.settings == mon.settings
    assert twin.references == mon.references
    for step in range(10, 30):
        x, p = _batch(rng)
        assert twin.update(x, p, now=float(step)) == mon.update(x, p, now=float(step))
    assert twin.snapshot() == mon.snapshot()


def test_event_round_trips_through_json():
    ev = DriftEvent("recovered", "pcvr", "psi", 0.1, 0.125, 5000, 800.0, "mlp-2", 12.5, source="prediction")
    d = orjson.loads(orjson.dumps(ev.to_dict()))
    assert d["type"] == "drift"
    assert d["feature"] == "pcvr"
    assert DriftEvent.from_dict(d) == ev


@pytest.mark.parametrize(
    "kw",
    [
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"window": 10, "min_count": 20},
        {"scale_factor": 1.0},
        {"recover_ratio": 0.0},
        {"eval_every": 0},
    ],
)
def test_settings_reject_nonsense(kw):
    with pytest.raises(ValueError):
        DriftSettings(**kw)


def test_settings_round_trip():
    s = DriftSettings(seasonal=("hour_sin",), psi_threshold=0.3)
    assert DriftSettings.from_dict(orjson.loads(orjson.dumps(s.to_dict()))) == s
