"""BidPipeline: queries in, outcomes out, with the real catalog, stats, models, auto-bid and auction."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from bidder.events import Query
from bidder.query.features import FEATURE_SPEC, Priors, QueryContext, gather
from bidder.query.pipeline import BidPipeline, BudgetView, StaticBudget, UnlimitedBudget
from bidder.query.rolling import RollingStats
from bidder.query.scoring import Models, load_models
from bidder.settings import DEFAULT_MODEL_DIR
from onnx_models.traffic import build_catalog
from streams.harness.market import World, WorldConfig

NOW = 1_767_272_400.0


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(WorldConfig(n_shops=20, n_listings=2_000, n_users=500), seed=3)


@pytest.fixture(scope="module")
def models() -> Models:
    return load_models(DEFAULT_MODEL_DIR, "mlp", "cpu", 1, 1)


@pytest.fixture
def stats(world: World) -> RollingStats:
    s = RollingStats(half_life_s=3600.0, capacity=len(world.listing_ids))
    rng = np.random.default_rng(0)
    rows = np.arange(len(world.listing_ids), dtype=np.int64)
    t = NOW - rng.uniform(0, 3600, len(rows))
    imps = rng.lognormal(2.0, 1.0, len(rows))
    s.record(rows, kind="impressions", now=t, amount=imps)
    s.record(rows, kind="clicks", now=t, amount=imps * 0.04)
    return s


def _queries(world: World, n: int, seed: int = 1, candidates: int = 300) -> list[Query]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        d = world.draw_query(rng, now=NOW, n_candidates=candidates)
        out.append(
            Query(
                query_id=f"q{i}", ts=NOW - 0.01, user_id=d.user_id,
                context=QueryContext(device=d.device, page=d.page, hour=d.hour, category=d.category),
                text=d.query_text, listing_ids=d.listing_ids, relevance=d.relevance,
            )
        )
    return out


def _pipeline(world: World, stats: RollingStats, models: Models, *, budget: BudgetView | None = None,
              seed: int = 5, perf: Iterator[float] | None = None, slots: int = 24) -> BidPipeline:
    catalog = build_catalog(world)
    kw = {} if perf is None else {"perf_counter": perf.__next__}
    return BidPipeline(
        catalog=catalog, stats=stats, priors=Priors(), ctr=models.ctr, cvr=models.cvr,
        budget=budget or UnlimitedBudget(), slots=slots, reserve_price=0.05, min_bid=0.02, max_bid=3.0,
        clock=lambda: NOW, rng=np.random.default_rng(seed), model_versions=models.versions, **kw,
    )


def test_outcomes_are_complete_and_consistent(world: World, stats: RollingStats, models: Models) -> None:
    pipe = _pipeline(world, stats, models)
    qs = _queries(world, 3)
    outs = pipe.process(qs)
    assert [o.query_id for o in outs] == ["q0", "q1", "q2"]
    for q, o in zip(qs, outs, strict=True):
        assert o.n_candidates == len(q.listing_ids)
        assert o.n_unknown == 0
        assert len(o.winners) == 24
        assert [w.slot for w in o.winners] == list(range(24))
        assert len({w.listing_id for w in o.winners}) == 24
        assert set(o.timings_ms) == {"gather", "score", "bid", "auction", "total"}
        assert all(v >= 0 for v in o.timings_ms.values())
        assert o.model_versions == models.versions
        ecpm = [w.bid * w.pctr for w in o.winners]
        assert ecpm == sorted(ecpm, reverse=True)
        # each winner carries the features exactly as served, and the model's scores of them
        rows, _ = pipe.catalog.rows(q.listing_ids)
        x = gather(rows=rows, relevance=q.relevance, context=q.context, catalog=pipe.catalog, stats=stats,
                   priors=Priors(), now=NOW)
        pctr, pcvr = models.ctr.score(x), models.cvr.score(x)
        idx = {lid: i for i, lid in enumerate(q.listing_ids.tolist())}
        for w in o.winners:
            i = idx[w.listing_id]
            assert len(w.features) == FEATURE_SPEC.n_features
            np.testing.assert_array_equal(np.asarray(w.features, np.float32), x[i])
            assert w.pctr == pytest.approx(float(pctr[i]), abs=1e-6)
            assert w.pcvr == pytest.approx(float(pcvr[i]), abs=1e-6)
            assert w.shop_id == int(pipe.catalog.shop_ids[pipe.catalog.shop_row[rows[i]]])
            assert 0.05 <= w.price <= w.bid + 1e-12
            assert 0.02 <= w.bid <= 3.0


def test_batch_equals_one_by_one(world: World, stats: RollingStats, models: Models) -> None:
    qs = _queries(world, 4, seed=2)
    batched = _pipeline(world, stats, models).process(qs)
    single = _pipeline(world, stats, models)
    one_by_one = [single.process([q])[0] for q in qs]
    for a, b in zip(batched, one_by_one, strict=True):
        assert [(w.listing_id, w.price) for w in a.winners] == [(w.listing_id, w.price) for w in b.winners]
    assert batched[0].extra == {"batch_queries": 4}


def test_unknown_and_inactive_candidates_are_skipped(
    world: World, stats: RollingStats, models: Models
) -> None:
    pipe = _pipeline(world, stats, models)
    q = _queries(world, 1, seed=4)[0]
    gone = int(q.listing_ids[0])
    pipe.catalog.remove_listing(gone)
    ids = np.concatenate([q.listing_ids, np.array([9, 10, 11], np.int64)])
    rel = np.concatenate([q.relevance, np.ones(3)])
    q2 = Query(query_id="u", ts=NOW, user_id=1, context=q.context, text="", listing_ids=ids, relevance=rel)
    o = pipe.process([q2])[0]
    assert o.n_unknown == 4
    assert o.n_candidates == len(ids)
    assert gone not in {w.listing_id for w in o.winners}
    assert len(o.winners) == 24
    nobody = Query(query_id="n", ts=NOW, user_id=1, context=q.context, text="",
                   listing_ids=np.array([1, 2], np.int64), relevance=np.ones(2))
    o = pipe.process([nobody])[0]
    assert (o.winners, o.n_unknown) == ((), 2)


def test_shops_without_budget_do_not_win(world: World, stats: RollingStats, models: Models) -> None:
    catalog = build_catalog(world)
    remaining = catalog.daily_budget[: catalog.n_shops].copy()
    broke = np.arange(0, catalog.n_shops, 2)
    remaining[broke] = 0.0
    pipe = _pipeline(world, stats, models, budget=StaticBudget(remaining_by_shop_row=remaining))
    broke_ids = set(catalog.shop_ids[broke].tolist())
    for o in pipe.process(_queries(world, 5, seed=6)):
        assert o.winners
        assert not broke_ids & {w.shop_id for w in o.winners}


def test_fewer_bidders_than_slots(world: World, stats: RollingStats, models: Models) -> None:
    p = _pipeline(world, stats, models)
    p.reserve_price = 0.0  # every bid (>= min_bid) enters: 10 bidders for 24 slots, all shown
    o = p.process(_queries(world, 1, candidates=10))[0]
    assert len(o.winners) == 10


def test_timings_use_the_injected_perf_counter(world: World, stats: RollingStats, models: Models) -> None:
    ticks = iter(float(i) * 1e-3 for i in range(10_000))  # every reading is 1 ms later
    o = _pipeline(world, stats, models, perf=ticks).process(_queries(world, 1))[0]
    assert o.timings_ms["gather"] == pytest.approx(1.0)
    assert o.timings_ms["score"] == pytest.approx(1.0)
    assert o.timings_ms["bid"] == pytest.approx(1.0)
    assert o.timings_ms["auction"] == pytest.approx(1.0)
    assert o.timings_ms["total"] == pytest.approx(7.0)


def test_same_seed_same_outcomes(world: World, stats: RollingStats, models: Models) -> None:
    qs = _queries(world, 3, seed=8)
    a = _pipeline(world, stats, models, seed=1).process(qs)
    b = _pipeline(world, stats, models, seed=1).process(qs)
    assert [o.winners for o in a] == [o.winners for o in b]


def test_budget_views() -> None:
    assert isinstance(UnlimitedBudget(), BudgetView)
    b = StaticBudget(remaining_by_shop_row=np.array([1.0, 0.5]), pacing=0.7)
    assert isinstance(b, BudgetView)
    assert b.pacing(np.array([0, 1]), NOW).tolist() == [0.7, 0.7]
    assert b.remaining(np.array([0, 5])).tolist() == [1.0, 0.0]  # unknown shop row: no budget
    charged = b.charge(np.array([1, 1]), amount=np.array([0.4, 0.4]))
    assert charged.tolist() == pytest.approx([0.4, 0.1])  # clamped to what is left
    assert b.remaining(np.array([1])).tolist() == [0.0]


@pytest.mark.parametrize(("id_span", "dense"), [(10**9, False), (60_000, True)])
def test_row_index_matches_catalog_rows(id_span: int, dense: bool) -> None:
    """Same answers as Catalog.rows in both snapshot forms (sorted ids, dense table), also after
    listings are added or withdrawn behind its back and for ids below, between and above the known."""
    from bidder.query.catalog import Catalog, RowIndex

    rng = np.random.default_rng(0)
    cat = Catalog(capacity=8)
    cat.upsert_shop(1, daily_budget=1.0, target_share=0.1)
    ids = (rng.choice(id_span, 3000, replace=False) + id_span).astype(np.int64)
    for i in ids[:1000].tolist():
        cat.upsert_listing(i, shop_id=1, price=1.0, category=0)
    index = RowIndex(cat, rebuild_after=300)
    assert index.dense is dense
    for step in range(1, 9):
        for i in ids[1000 + (step - 1) * 200 : 1000 + step * 200].tolist():  # grows behind the index
            cat.upsert_listing(i, shop_id=1, price=1.0, category=0)
        for i in rng.choice(ids, 20).tolist():
            cat.remove_listing(i)
        ask = np.concatenate([rng.choice(ids, 500), rng.integers(0, 3 * id_span, 100), [-1, 0]]).astype(np.int64)
        want_rows, want_known = cat.rows(ask)
        got_rows, got_known = index.rows(ask)
        np.testing.assert_array_equal(got_known, want_known)
        np.testing.assert_array_equal(got_rows, want_rows)
    empty = RowIndex(Catalog())
    assert empty.rows(np.array([5], np.int64))[1].tolist() == [False]


def test_gather_matches_the_feature_definitions(world: World, stats: RollingStats) -> None:
    """Every column as the feature table in ``bidder.query.features`` defines it, computed plainly per
    candidate, including a listing never seen (no history) and one beyond the stats' capacity."""
    catalog = build_catalog(world)
    q = _queries(world, 1, seed=4, candidates=50)[0]
    rows = np.concatenate([catalog.rows(q.listing_ids)[0], [0, len(world.listing_ids) - 1]])
    fresh = RollingStats(half_life_s=stats.half_life_s, capacity=8)  # rows past 8 never seen
    for s in (stats, fresh):
        rel = np.linspace(0.0, 1.0, len(rows))
        now = NOW + 120.0
        x = gather(rows=rows, relevance=rel, context=q.context, catalog=catalog, stats=s, priors=Priors(), now=now)
        assert x.dtype == np.float32 and x.shape == (len(rows), FEATURE_SPEC.n_features)
        p = Priors()
        for i, r in enumerate(rows.tolist()):
            v = s.view(np.array([r]), now=now)
            imp, clk, conv, spend = (float(a[0]) for a in (v.impressions, v.clicks, v.conversions, v.spend))
            angle = 2 * np.pi * (q.context.hour % 24) / 24
            want = {
                "relevance": rel[i],
                "ctr_smoothed": (clk + p.strength * p.prior_ctr) / (imp + p.strength),
                "cvr_smoothed": (conv + p.strength * p.prior_ctr * p.prior_cvr) / (clk + p.strength * p.prior_ctr),
                "log_impressions": np.log1p(imp),
                "log_clicks": np.log1p(clk),
                "impression_recency": np.log1p(min(max(now - float(v.last_impression_at[0]), 0), 7 * 86_400)),
                "click_recency": np.log1p(min(max(now - float(v.last_click_at[0]), 0), 7 * 86_400)),
                "log_price": np.log(max(float(catalog.price[r]), 1e-6)),
                "category_match": float(catalog.category[r] == q.context.category),
                "hour_sin": np.sin(angle),
                "hour_cos": np.cos(angle),
                "device_mobile": float(q.context.device == "mobile"),
                "device_desktop": float(q.context.device == "desktop"),
                "device_app": float(q.context.device == "app"),
                "page_search": float(q.context.page == "search"),
                "page_category": float(q.context.page == "category"),
                "page_market": float(q.context.page == "market"),
                "log_spend": np.log1p(spend),
            }
            assert set(want) == set(FEATURE_SPEC.names)
            got = dict(zip(FEATURE_SPEC.names, x[i].tolist(), strict=True))
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7), (s is fresh, r)
