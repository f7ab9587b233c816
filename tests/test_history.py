"""The world has a past: a listing history folded elsewhere, merged by every worker, gives the same features
as folding that past itself; it is written once to its topic and a worker that reads it starts warm."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.decoding import Limits
from bidder.events import encode
from bidder.query.rolling import COUNTERS, RollingStats
from bidder.replica.history import HISTORY_TOPIC, ListingHistory, merge_record, shipped_history, world_key
from bidder.replica.state import BidderState
from bidder.settings import DEFAULT_MODEL_DIR, Settings
from onnx_models.traffic import SimConfig, simulate
from streams.harness.market import WorldConfig
from streams.harness.simulator import Simulator

HALF_LIFE = 600.0
T0 = 1_767_272_400.0
KINDS = st.sampled_from(COUNTERS)
EVENTS = st.lists(st.tuples(st.integers(0, 5), KINDS, st.floats(0, 3000), st.floats(0.01, 5)), max_size=60)


def _fold(stats: RollingStats, events: list[tuple[int, str, float, float]]) -> None:
    for row, kind, t, amount in events:
        stats.record(np.array([row]), kind=kind, now=T0 + t, amount=amount if kind == "spend" else 1.0)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(EVENTS, EVENTS, st.floats(3000, 9000))
def test_history_then_live_events_equal_one_fold(past: list[tuple[int, str, float, float]],
                                                 live: list[tuple[int, str, float, float]], now: float) -> None:
    """Past events folded offline and merged, plus live events folded here (in either order), read the same as
    one process folding everything; the live events come after the history's end."""
    live = [(r, k, t + 3000, a) for r, k, t, a in live]
    one = RollingStats(half_life_s=HALF_LIFE, capacity=6)
    _fold(one, past + live)
    offline = RollingStats(half_life_s=HALF_LIFE, capacity=6)
    _fold(offline, past)
    history = ListingHistory.from_stats(offline, listing_ids=np.arange(6) * 100 + 103, end=T0 + 3000, span_s=3000)
    for history_first in (True, False):
        worker = RollingStats(half_life_s=HALF_LIFE, capacity=6)
        if not history_first:
            _fold(worker, live)
        for rec in history.records(end=T0 + 3000):
            merge_record(worker, (rec["listing_id"] - 103) // 100, rec)
        if history_first:
            _fold(worker, live)
        rows = np.arange(6)
        np.testing.assert_allclose(worker.columns(rows, now=T0 + now), one.columns(rows, now=T0 + now),
                                   rtol=1e-9, atol=1e-12)


def test_saved_history_loads_identically(tmp_path: Path) -> None:
    log = simulate(dataclasses.replace(SimConfig.small(), n_log=0, n_warmup=200), seed=2)
    h = log.history
    assert h is not None and h.n_seen > 0 and h.world == world_key(SimConfig.small().world, 7)
    h.save(tmp_path / "h.npz")
    back = ListingHistory.load(tmp_path / "h.npz")
    assert back.world == h.world and back.span_s == h.span_s and back.half_life_s == h.half_life_s
    np.testing.assert_allclose(back.counters, h.counters, rtol=1e-6)
    assert [r["listing_id"] for r in back.records(end=0.0)] == [r["listing_id"] for r in h.records(end=0.0)]


def test_shipped_history_is_the_default_worlds_and_only_its() -> None:
    shipped = shipped_history(DEFAULT_MODEL_DIR, world=world_key(WorldConfig(), 7))
    assert shipped is not None, "onnx_models/history.npz is written by `python -m onnx_models.train`"
    assert shipped.half_life_s == Settings().feature_half_life_s and shipped.span_s >= 2 * 3600
    assert shipped.n_seen > 0.9 * WorldConfig().n_listings  # two hours at 50 q/s show nearly every listing
    assert shipped_history(DEFAULT_MODEL_DIR, world=world_key(WorldConfig(), 8)) is None


def _state() -> BidderState:
    return BidderState(half_life_s=HALF_LIFE, click_window_s=600.0, attribution_window_s=600.0, limits=Limits())


def test_state_merges_history_once_its_listing_is_known_and_skips_another_half_life() -> None:
    sim = Simulator(_small_world(), rng=np.random.default_rng(1), n_candidates=20)
    shops, listings = sim.catalog(now=T0)
    offline = RollingStats(half_life_s=HALF_LIFE, capacity=len(listings))
    offline.record(np.array([0, 0, 1]), kind="impressions", now=T0 - 100)
    offline.record(np.array([1]), kind="clicks", now=T0 - 50)
    h = ListingHistory.from_stats(offline, listing_ids=np.array([x.listing_id for x in listings]), end=T0,
                                  span_s=3600.0)
    recs = list(h.records(end=T0))
    assert [r["listing_id"] for r in recs] == [listings[0].listing_id, listings[1].listing_id]
    state = _state()
    for i, r in enumerate(recs):  # before the catalog: kept until the listing arrives
        state.apply(HISTORY_TOPIC, 0, i, orjson.dumps(r), now=T0)
    assert state.counts["listing-history"] == 0 and state.history_from == float("inf")
    for i, ev in enumerate([*shops, *listings]):
        state.apply("shops" if i < len(shops) else "listings", 0, i, encode(ev), now=T0)
    assert state.counts["listing-history"] == 2 and state.history_from == T0 - 3600.0
    _, known = state.catalog.rows(np.array([x.listing_id for x in listings]))
    assert known.all()  # with a history or without, every listing of the catalog bids
    row = state.catalog.listing_row(listings[0].listing_id)
    assert row is not None
    cols = state.stats.columns(np.array([row]), now=T0)
    assert cols[0, 0] == pytest.approx(2 * 2 ** (-100 / HALF_LIFE)) and cols[4, 0] == pytest.approx(T0 - 100)
    other = _state()
    other.stats = RollingStats(half_life_s=60.0)
    other.apply(HISTORY_TOPIC, 0, 0, orjson.dumps(recs[0]), now=T0)
    assert other.counts["listing-history_other_half_life"] == 1 and other.history_from == float("inf")


def _small_world():  # type: ignore[no-untyped-def]
    from streams.harness.market import World

    return World.generate(WorldConfig(n_shops=3, n_listings=50, n_users=10), seed=1)


@pytest.mark.broker
def test_history_is_written_once_and_a_worker_reading_it_starts_warm(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.admin import create_topics
    from streams.broker import embedded_broker
    from streams.harness.simulate import HistoryExistsError, run_simulation, world_history, write_history
    from streams.process import WorkerProcess

    world = WorldConfig(n_shops=20, n_listings=2_000, n_users=500)
    with embedded_broker("noida") as broker:
        monkeypatch.setenv("BIDDER_KAFKA_BOOTSTRAP", broker.bootstrap)
        s = Settings()
        asyncio.run(create_topics(s, bootstrap=broker.bootstrap))
        history = world_history(s, world=world, seed=3, hours=1.2)
        assert history is not None and history.span_s >= 1.2 * 3600 - 60
        ready: dict[str, object] = {}

        async def start_worker() -> None:
            w = WorkerProcess.start(bootstrap=broker.bootstrap, log_path=tmp_path / "worker.log")
            try:
                ready.update(await asyncio.to_thread(w.wait_ready))
            finally:
                w.stop()

        report = asyncio.run(run_simulation(s, bootstrap=broker.bootstrap, rate=5.0, duration_s=0.5, seed=3,
                                            world=world, n_candidates=50, after_catalog=start_worker, drain_s=3.0,
                                            history=history))
        assert report.sent["listing_history"] == history.n_seen > 0.5 * world.n_listings
        assert ready.get("warming") is None, ready  # an hour of past >= BIDDER_WARM_HISTORY_S (3600 s)
        with pytest.raises(HistoryExistsError, match="already holds"):
            asyncio.run(write_history(s, broker.bootstrap, history, end=T0))
