"""The demo's summary checks: falling behind is a failed check named in one line (exit 1)."""

from __future__ import annotations

from streams.demo import kept_up, summarize
from streams.monitor import OutputTally
from streams.simulate import SimulationReport


def _report(latency_at: list[tuple[float, float]], sent: int) -> SimulationReport:
    r = SimulationReport(sent={"queries": sent})
    for at, lat in latency_at:
        r.sent_at_s.append(at)
        r.latencies_ms.append(lat)
    r.elapsed_s = 60.0
    return r


def _tally(n: int) -> OutputTally:
    t = OutputTally()
    t.outcome_ids = {f"q{i}" for i in range(n)}
    return t


def test_a_run_whose_latency_grows_fails_kept_up_and_says_why() -> None:
    # a backlog: each query waits a little longer than the one before (60 s at 50 q/s)
    growing = [(i / 50, 10.0 + 20.0 * i / 50) for i in range(3000)]
    s = summarize(_report(growing, 3000), _tally(3000), {}, 60.0)
    assert not s.checks["kept_up"] and not s.ok
    assert s.numbers["latency_last_10s_p50_ms"] > s.numbers["latency_first_10s_p50_ms"]
    assert s.numbers["failed_checks"] == [next(r for r in s.numbers["failed_checks"] if r.startswith("fell behind"))]


def test_a_steady_run_keeps_up_and_reconciles() -> None:
    steady = [(i / 50, 12.0 + (i % 7)) for i in range(3000)]
    s = summarize(_report(steady, 3000), _tally(3000), {}, 60.0)
    assert s.checks["kept_up"] and s.ok and s.numbers["failed_checks"] == []


def test_a_lost_query_is_named() -> None:
    steady = [(i / 50, 12.0) for i in range(3000)]
    s = summarize(_report(steady, 3000), _tally(2999), {}, 60.0)
    assert s.numbers["failed_checks"] == ["queries: 3000 sent != 2999 outcomes + 0 dead-lettered"]


def test_kept_up_tolerates_noise_but_not_a_backlog() -> None:
    assert kept_up([10.0] * 50, [24.0] * 50)[0]  # 1.5 x 10 + 10 = 25
    assert not kept_up([10.0] * 50, [26.0] * 50)[0]
    assert not kept_up([], [10.0])[0]
