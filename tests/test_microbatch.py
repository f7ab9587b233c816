"""Micro-batcher: exact scatter, deadline order, splitting, triggers, overload shedding and its counters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bidder.query.microbatch import CallCost, MicroBatcher, Result
from bidder.query.scoring import OnnxScorer
from bidder.settings import DEFAULT_MODEL_DIR


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class TagScorer:
    """Row-wise and exact: ``score = sign * (1000 * query + row) + offset``; costs ``fixed + per_row * n``
    seconds of the fake clock; remembers every call's tags."""

    def __init__(self, clock: Clock, *, fixed_s: float = 0.0, per_row_s: float = 0.0, sign: float = 1.0,
                 offset: float = 0.0) -> None:
        self.clock, self.fixed_s, self.per_row_s = clock, fixed_s, per_row_s
        self.sign, self.offset = np.float32(sign), np.float32(offset)
        self.calls: list[np.ndarray] = []

    def score(self, x: np.ndarray) -> np.ndarray:
        self.calls.append((x[:, 0] * 1000 + x[:, 1]).astype(np.int64))
        self.clock.t += self.fixed_s + self.per_row_s * len(x)
        return (self.sign * (x[:, 0] * np.float32(1000) + x[:, 1]) + self.offset).astype(np.float32)


def block(q: int, n: int) -> np.ndarray:
    x = np.zeros((n, 3), np.float32)
    x[:, 0] = q
    x[:, 1] = np.arange(n)
    x[:, 2] = 7.0
    return x


def expect(x: np.ndarray, sign: float = 1.0, offset: float = 0.0) -> np.ndarray:
    return (np.float32(sign) * (x[:, 0] * np.float32(1000) + x[:, 1]) + np.float32(offset)).astype(np.float32)


def by_key(results: list[Result]) -> dict[str, Result]:
    keys = [r.key for r in results]
    assert len(keys) == len(set(keys)), "a query answered twice"
    return {r.key: r for r in results}


# --- the property: identical to scoring each query alone ---------------------------------------------

arrival = st.tuples(
    st.floats(0.0, 3.0),  # ms since the previous arrival
    st.integers(0, 40),  # rows
    st.one_of(st.none(), st.floats(0.2, 30.0)),  # budget ms
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrivals=st.lists(arrival, min_size=1, max_size=30),
    max_rows=st.integers(1, 64),
    max_wait_ms=st.floats(0.0, 2.0),
    fixed_ms=st.floats(0.0, 2.0),
    per_row_us=st.floats(0.0, 50.0),
    with_fallback=st.booleans(),
    max_pending=st.one_of(st.none(), st.integers(1, 200)),
)
def test_results_equal_scoring_each_query_alone(
    arrivals: list[tuple[float, int, float | None]], max_rows: int, max_wait_ms: float, fixed_ms: float,
    per_row_us: float, with_fallback: bool, max_pending: int | None,
) -> None:
    clock = Clock()
    ctr = TagScorer(clock, fixed_s=fixed_ms / 1e3, per_row_s=per_row_us / 1e6)
    cvr = TagScorer(clock, offset=0.5)
    fb = [TagScorer(clock, fixed_s=1e-5, sign=-1.0), TagScorer(clock, sign=-1.0, offset=0.5)]
    mb = MicroBatcher(primary=[ctr, cvr], fallback=fb if with_fallback else None, max_rows=max_rows,
                      max_wait_ms=max_wait_ms, default_budget_ms=10.0, max_pending_rows=max_pending, clock=clock)
    blocks: dict[str, np.ndarray] = {}
    results: list[Result] = []
    for q, (dt, n, budget) in enumerate(arrivals):
        clock.t += dt / 1e3
        blocks[f"q{q}"] = block(q, n)
        mb.submit(f"q{q}", blocks[f"q{q}"], budget_ms=budget)
        results += mb.poll()
    for _ in range(10 * len(arrivals) + 10):  # drive the clock to each due time, as the agent's timer does
        due = mb.next_due()
        if due is None:
            break
        clock.t = max(clock.t, due)
        results += mb.poll()
    results += mb.flush()
    got = by_key(results)
    assert set(got) == set(blocks)
    assert mb.pending_rows == 0 and mb.pending_queries == 0
    primary_rows = 0
    for key, r in got.items():
        x = blocks[key]
        if r.route == "primary":
            np.testing.assert_array_equal(r.scores[0], expect(x))
            np.testing.assert_array_equal(r.scores[1], expect(x, offset=0.5))
            primary_rows += len(x)
            assert r.calls >= -(-len(x) // max_rows)
        elif r.route == "fallback":
            assert with_fallback
            np.testing.assert_array_equal(r.scores[0], expect(x, sign=-1.0))
            np.testing.assert_array_equal(r.scores[1], expect(x, sign=-1.0, offset=0.5))
            assert r.reason.startswith(("deadline", "queue_full"))
        else:
            assert r.scores == ()
            assert r.reason.startswith(("deadline", "queue_full"))
    # every primary row scored exactly once, calls bounded by max_rows, CTR and CVR saw the same rows
    tags = np.concatenate(ctr.calls) if ctr.calls else np.empty(0, np.int64)
    assert len(tags) == primary_rows == len(np.unique(tags))
    assert all(len(c) <= max_rows for c in ctr.calls)
    assert [c.tolist() for c in ctr.calls] == [c.tolist() for c in cvr.calls]
    # the counters add up
    c = mb.counts
    decided = sum(v for (name, _), v in c.items() if name == "decisions")
    assert decided == c[("queries_submitted", "")] == len(arrivals)
    assert c[("rows_scored", "")] == primary_rows
    assert sum(v for (name, _), v in c.items() if name == "calls") == len(ctr.calls)
    assert c[("late_queries", "")] == sum(r.late for r in got.values())
    assert c[("decisions", "primary:ok")] == sum(r.route == "primary" for r in got.values())


# --- ordering, splitting, triggers -------------------------------------------------------------------


def test_calls_follow_deadlines_not_arrival() -> None:
    clock = Clock()
    s = TagScorer(clock)
    mb = MicroBatcher(primary=[s], max_rows=5, max_wait_ms=100.0, clock=clock)
    for q, budget in enumerate([40.0, 10.0, 30.0, 20.0]):
        mb.submit(f"q{q}", block(q, 5), budget_ms=budget)
    res = mb.flush()
    assert [r.key for r in res] == ["q1", "q3", "q2", "q0"]
    assert [int(c[0]) // 1000 for c in s.calls] == [1, 3, 2, 0]
    assert mb.counts[("calls", "flush")] == 4


def test_large_query_is_split_and_reassembled() -> None:
    clock = Clock()
    s = TagScorer(clock)
    mb = MicroBatcher(primary=[s], max_rows=10, max_wait_ms=1.0, clock=clock)
    big, small = block(1, 25), block(2, 5)
    mb.submit("big", big, budget_ms=20.0)
    mb.submit("small", small, budget_ms=30.0)
    res = by_key(mb.poll() + mb.flush())
    assert [len(c) for c in s.calls] == [10, 10, 10]
    # the last call holds big's rows 20..24 then small's 0..4: no row of one query in the other's result
    assert s.calls[2].tolist() == [1020, 1021, 1022, 1023, 1024, 2000, 2001, 2002, 2003, 2004]
    np.testing.assert_array_equal(res["big"].scores[0], expect(big))
    np.testing.assert_array_equal(res["small"].scores[0], expect(small))
    assert res["big"].calls == 3 and res["small"].calls == 1
    assert mb.counts[("split_queries", "")] == 1


def test_max_wait_trigger_and_next_due() -> None:
    clock = Clock()
    s = TagScorer(clock)
    mb = MicroBatcher(primary=[s], max_rows=100, max_wait_ms=2.0, default_budget_ms=50.0, clock=clock)
    assert mb.next_due() is None
    clock.t = 1.0
    mb.submit("a", block(0, 3))
    assert mb.next_due() == pytest.approx(1.002)
    clock.t = 1.0015
    assert mb.poll() == []
    clock.t = 1.002
    [r] = mb.poll()
    assert r.key == "a" and r.route == "primary" and not r.late
    assert r.deadline == pytest.approx(1.05)
    assert mb.counts[("calls", "wait")] == 1


def test_deadline_trigger_leaves_the_call_time() -> None:
    clock = Clock()
    s = TagScorer(clock, fixed_s=0.002)
    cost = CallCost().update(3, 0.002)
    mb = MicroBatcher(primary=[s], max_rows=100, max_wait_ms=100.0, clock=clock, primary_cost=cost)
    mb.submit("a", block(0, 3), budget_ms=5.0)
    assert mb.next_due() == pytest.approx(0.003)
    clock.t = 0.0029
    assert mb.poll() == []
    clock.t = 0.003
    [r] = mb.poll()
    assert r.route == "primary" and r.finished_at == pytest.approx(0.005) and not r.late
    assert mb.counts[("calls", "deadline")] == 1


def test_full_trigger() -> None:
    clock = Clock()
    mb = MicroBatcher(primary=[TagScorer(clock)], max_rows=8, max_wait_ms=100.0, clock=clock)
    mb.submit("a", block(0, 4))
    assert mb.poll() == []
    mb.submit("b", block(1, 4))
    assert {r.key for r in mb.poll()} == {"a", "b"}
    assert mb.counts[("calls", "full")] == 1


def test_empty_block_is_answered_without_a_call() -> None:
    clock = Clock()
    s = TagScorer(clock)
    mb = MicroBatcher(primary=[s, s], clock=clock)
    mb.submit("none", np.zeros((0, 3), np.float32))
    assert mb.next_due() is not None and mb.pending_queries == 1
    [r] = mb.poll()
    assert r.route == "primary" and [len(a) for a in r.scores] == [0, 0]
    assert s.calls == [] and mb.pending_queries == 0


def test_tail_and_elapsed_shorten_the_deadline() -> None:
    clock = Clock()
    mb = MicroBatcher(primary=[TagScorer(clock)], tail_ms=1.0, clock=clock)
    mb.submit("a", block(0, 1), budget_ms=10.0, elapsed_ms=4.0)
    [r] = mb.flush()
    assert r.deadline == pytest.approx(0.005)


# --- overload ------------------------------------------------------------------------------------------


def overloaded(fallback_fixed_s: float | None) -> tuple[MicroBatcher, Clock]:
    """Primary calls cost 10 ms (already measured); budgets are 5 ms."""
    clock = Clock()
    primary = [TagScorer(clock, fixed_s=0.010)]
    fallback = None if fallback_fixed_s is None else [TagScorer(clock, fixed_s=fallback_fixed_s, sign=-1.0)]
    mb = MicroBatcher(primary=primary, fallback=fallback, max_rows=100, max_wait_ms=0.5, default_budget_ms=5.0,
                      clock=clock, primary_cost=CallCost().update(10, 0.010),
                      fallback_cost=None if fallback_fixed_s is None else CallCost().update(10, fallback_fixed_s))
    return mb, clock


def test_overload_sheds_to_the_fallback_and_counts_it() -> None:
    mb, _ = overloaded(fallback_fixed_s=0.0005)
    xs = {f"q{i}": block(i, 10) for i in range(4)}
    for k, x in xs.items():
        mb.submit(k, x)
    res = by_key(mb.poll())
    assert set(res) == set(xs)
    for k, r in res.items():
        assert r.route == "fallback"
        assert r.reason.startswith("deadline: needs ~10 ms on primary")
        np.testing.assert_array_equal(r.scores[0], expect(xs[k], sign=-1.0))
        assert not r.late
    assert mb.counts[("decisions", "fallback:deadline")] == 4
    assert mb.counts[("fallback_calls", "")] == 1  # the shed queries share one fallback call
    assert mb.counts[("rows_scored", "")] == 0
    assert ("bidder_microbatch_decisions_total", {"route": "fallback", "reason": "deadline"}, 4.0) in mb.samples()


def test_overload_without_fallback_rejects_with_a_reason() -> None:
    mb, _ = overloaded(fallback_fixed_s=None)
    mb.submit("a", block(0, 10))
    [r] = mb.poll()
    assert r.route == "rejected" and r.scores == ()
    assert "needs ~10 ms on primary, 5 ms left" in r.reason
    assert mb.counts[("decisions", "rejected:deadline")] == 1


def test_fallback_too_slow_is_a_rejection() -> None:
    mb, _ = overloaded(fallback_fixed_s=0.008)
    mb.submit("a", block(0, 10))
    [r] = mb.poll()
    assert r.route == "rejected" and "fallback cannot make it" in r.reason


def test_queue_limit_sheds_at_submit() -> None:
    clock = Clock()
    mb = MicroBatcher(primary=[TagScorer(clock)], fallback=[TagScorer(clock, sign=-1.0)], max_rows=100,
                      max_wait_ms=10.0, max_pending_rows=15, clock=clock)
    mb.submit("a", block(0, 10))
    mb.submit("b", block(1, 10))
    [r] = mb.poll()
    assert r.key == "b" and r.route == "fallback" and r.reason.startswith("queue_full")
    [a] = mb.flush()
    assert a.key == "a" and a.route == "primary"
    assert mb.counts[("decisions", "fallback:queue_full")] == 1


def test_measured_cost_drives_shedding() -> None:
    """Nothing is known at first: the first query goes to primary, is measured at 10 ms, and the next
    5 ms query is shed."""
    clock = Clock()
    mb = MicroBatcher(primary=[TagScorer(clock, fixed_s=0.010)], max_rows=100, max_wait_ms=0.0,
                      default_budget_ms=5.0, clock=clock)
    mb.submit("first", block(0, 10))
    [first] = mb.poll()
    assert first.route == "primary" and first.late
    mb.submit("second", block(1, 10))
    [second] = mb.poll()
    assert second.route == "rejected"
    assert mb.counts[("late_queries", "")] == 1


def test_call_cost_fit() -> None:
    c = CallCost(decay=1.0)
    for rows in (100, 200, 400, 800):
        c.update(rows, 0.0001 + rows * 1e-6)
    assert c.predict(600) == pytest.approx(0.0007, rel=1e-6)
    assert CallCost(fixed_s=0.001, per_row_s=1e-6).predict(1000) == pytest.approx(0.002)


def test_rejects_bad_config() -> None:
    clock = Clock()
    with pytest.raises(ValueError, match="pair up"):
        MicroBatcher(primary=[TagScorer(clock)], fallback=[], clock=clock)
    with pytest.raises(ValueError, match="primary"):
        MicroBatcher(primary=[], clock=clock)


# --- with the real models --------------------------------------------------------------------------------


def test_onnx_models_through_the_batcher_match_scoring_alone() -> None:
    ctr = OnnxScorer(DEFAULT_MODEL_DIR / "mlp_ctr.onnx", io_binding=True, buckets=(64, 256), warmup_rows=0)
    cvr = OnnxScorer(DEFAULT_MODEL_DIR / "mlp_cvr.onnx", warmup_rows=0)
    golden = ctr.meta.golden_matrix()
    rng = np.random.default_rng(0)
    clock = Clock()
    mb = MicroBatcher(primary=[ctr, cvr], max_rows=200, max_wait_ms=1.0, clock=clock)
    xs = {}
    for i, n in enumerate([150, 30, 420, 1, 77]):
        x = golden[rng.integers(0, len(golden), n)] + rng.normal(0, 0.05, (n, golden.shape[1])).astype(np.float32)
        xs[f"q{i}"] = np.ascontiguousarray(x, np.float32)
        mb.submit(f"q{i}", xs[f"q{i}"], budget_ms=1e4)
    res = by_key(mb.poll() + mb.flush())
    for k, x in xs.items():
        for scorer, got in zip((ctr, cvr), res[k].scores, strict=True):
            alone = scorer.session.run([scorer.output_name], {scorer.input_name: x})[0]
            np.testing.assert_allclose(got, alone, atol=1e-6)
    assert ctr.io_stats.pad_rows > 0  # calls of 200 rows padded to 256
