"""The simulator is deterministic for a seed, keeps the truth, and drives traffic over the broker."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from bidder.events import encode
from streams.harness.market import World, WorldConfig, position_bias
from streams.harness.simulator import Simulator

SMALL = WorldConfig(n_shops=10, n_listings=500, n_users=100)


def run_sim(seed: int) -> tuple[list[bytes], list[str]]:
    sim = Simulator(World.generate(SMALL, seed=seed), rng=np.random.default_rng(seed), n_candidates=50,
                    purchase_delay_mean_s=1.0)
    out: list[bytes] = []
    clicks: list[str] = []
    shops, listings = sim.catalog(now=1_800_000_000.0)
    out += [encode(e) for e in [*shops, *listings]]
    for i in range(200):
        now = 1_800_000_000.0 + i
        q = sim.next_query(now=now)
        out.append(encode(q))
        outcome = {"query_id": q.query_id, "ts": now, "winners": [
            {"slot": s, "listing_id": int(lid), "shop_id": 1, "price": 0.1, "click_token": f"t{s}"}
            for s, lid in enumerate(q.listing_ids[:24])]}
        clicks += [encode(c).decode() for c in sim.answer(outcome, now=now)]
        out += [encode(p) for p in sim.due_purchases(now=now)]
    return out, clicks


def test_same_seed_same_world_and_traffic() -> None:
    a, ca = run_sim(3)
    b, cb = run_sim(3)
    assert a == b and ca == cb
    c, _ = run_sim(4)
    assert a != c
    assert ca  # clicks happen


def test_truth_is_kept_and_clicks_follow_it() -> None:
    sim = Simulator(World.generate(SMALL, seed=1), rng=np.random.default_rng(2), n_candidates=50,
                    duplicate_click_rate=0.0)
    n_clicks = 0
    expected = 0.0
    for i in range(400):
        q = sim.next_query(now=1.8e9 + i)
        winners = [{"slot": s, "listing_id": int(lid), "shop_id": 1, "price": 0.1, "click_token": f"t{s}"}
                   for s, lid in enumerate(q.listing_ids[:24])]
        n_clicks += len(sim.answer({"query_id": q.query_id, "ts": 1.8e9 + i, "winners": winners}, now=1.8e9 + i))
    expected = sum(imp.p_click for imp in sim.impressions)
    assert len(sim.impressions) == 400 * 24
    assert all(imp.clicked == (imp.clicked and imp.p_click > 0) for imp in sim.impressions)
    # observed clicks within 5 standard deviations of the truth's expectation
    assert abs(n_clicks - expected) < 5 * np.sqrt(expected)
    assert position_bias(np.array([0, 23])).tolist()[0] > position_bias(np.array([0, 23])).tolist()[1]
    # an outcome for a query it never sent is counted, not answered
    assert sim.answer({"query_id": "nope", "winners": winners}, now=1.8e9) == []
    assert sim.sent["outcomes_unknown"] == 1


def test_cli_simulate_runs_against_the_broker(bootstrap: str) -> None:
    env = {**os.environ, "BIDDER_KAFKA_BOOTSTRAP": bootstrap}
    res = subprocess.run([sys.executable, "-m", "bidder", "simulate", "--duration", "2", "--rate", "20",
                          "--drain", "0"], capture_output=True, env=env, timeout=120, check=False)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    text = res.stdout.decode()
    assert "queries" in text and "40" in text
