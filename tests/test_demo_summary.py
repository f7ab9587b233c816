"""The demo's summary checks: every input record accounted for (handled, dead-lettered, in flight,
lost), and falling behind or losing anything is a failed check named in one line (exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from streams.demo import Drain, kept_up, summarize
from streams.harness.simulate import SimulationReport
from streams.monitor import OutputTally


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
    assert s.numbers["failed_checks"] == ["lost: 1 query neither handled, dead-lettered nor waiting on 'queries'"]
    assert s.numbers["accounting"]["queries"] == {"sent": 3000, "handled": 2999, "dead_lettered": 0,
                                                  "in_flight": 0, "lost": 1, "excess": 0, "backlog": 0}


def test_a_backlog_is_in_flight_not_lost_and_fails_drained() -> None:
    steady = [(i / 50, 12.0) for i in range(3000)]
    report = _report(steady, 3000)
    report.sent["clicks"] = 100
    tally = _tally(3000)
    tally.ledger["charged"] = 60
    drain = Drain(backlog={"queries": 2, "clicks": 40}, seconds=60.0, bound_s=60.0, done=False)
    s = summarize(report, tally, {}, 60.0, drain)
    assert s.numbers["accounting"]["clicks"]["in_flight"] == 40 and s.numbers["accounting"]["clicks"]["lost"] == 0
    # the committed offset lags what was answered: a backlog never makes an answered query in flight
    assert s.numbers["accounting"]["queries"]["in_flight"] == 0
    assert s.checks["nothing_lost"] and not s.checks["drained"]
    assert s.numbers["failed_checks"] == [
        "fell behind: 40 clicks still in flight (on their topics, not yet taken by the worker) after draining "
        "60.0 s (bound 60 s)"]


def test_more_outputs_than_inputs_is_not_reconciled() -> None:
    steady = [(i / 50, 12.0) for i in range(100)]
    s = summarize(_report(steady, 100), _tally(101), {}, 2.0)
    assert not s.checks["nothing_lost"]
    assert "queries: 1 more handled or dead-lettered than sent" in s.numbers["failed_checks"][0]


@pytest.mark.broker
def test_a_slowed_bill_agent_shows_clicks_in_flight_and_exits_1() -> None:
    """The bill agent slowed to 1 click/s (``BIDDER_FAULT_SLOW=clicks:1.0``) against 3-6 clicks/s of
    traffic (15 q/s): after a 3 s drain the clicks it has not taken are in flight (not lost), and the demo
    exits 1 saying so. Queries are all answered (purchases may wait on their clicks: in flight too, never
    lost). At 4 clicks/s (0.25 s) a run that happened to draw 50 clicks drained them all in 12 + 3 s."""
    proc = subprocess.run([sys.executable, "-m", "bidder", "demo", "--seconds", "12", "--rate", "15",
                           "--drain-s", "3", "--json"], capture_output=True, timeout=300, check=False,
                          env={**os.environ, "BIDDER_FAULT_SLOW": "clicks:1.0"})
    out = orjson.loads(proc.stdout)
    acct = out["numbers"]["accounting"]
    print(orjson.dumps(acct, option=orjson.OPT_INDENT_2).decode(), proc.stderr.decode()[-600:])
    assert proc.returncode == 1
    assert acct["clicks"]["in_flight"] > 0 and acct["clicks"]["lost"] == 0
    assert acct["clicks"]["sent"] == (acct["clicks"]["handled"] + acct["clicks"]["dead_lettered"]
                                      + acct["clicks"]["in_flight"])
    assert acct["queries"]["in_flight"] == 0 and acct["queries"]["lost"] == 0 and acct["purchases"]["lost"] == 0
    assert out["checks"]["drained"] is False and out["checks"]["nothing_lost"] is True
    err = proc.stderr.decode()
    assert f"demo failed: fell behind: {acct['clicks']['in_flight']} clicks" in err and "still in flight" in err


def test_kept_up_tolerates_noise_but_not_a_backlog() -> None:
    assert kept_up([10.0] * 50, [24.0] * 50)[0]  # 1.5 x 10 + 10 = 25
    assert not kept_up([10.0] * 50, [26.0] * 50)[0]
    assert not kept_up([], [10.0])[0]


def test_calibration_joins_clicks_to_what_was_predicted_for_them() -> None:
    from streams.demo import calibration

    t = OutputTally()
    winners = [{"listing_id": 100 + k, "pctr": 0.02, "pcvr": 0.1 + 0.1 * k, "shop_id": 7} for k in range(4)]
    for q in range(50):  # 200 impressions predicted at 2 %
        t.add("auctions", orjson.dumps({"query_id": f"q{q}", "winners": winners, "model_versions": {"ctr": "a"}}))
    for q in range(8):  # 8 clicks (4 %), each on listing 101 (pCVR 0.2) or 103 (pCVR 0.4)
        listing = 101 if q < 4 else 103
        t.add("billing", orjson.dumps({"status": "charged", "click_id": f"c{q}", "query_id": f"q{q}",
                                       "listing_id": listing, "shop_id": 7, "amount": 0.1}))
    t.add("billing", orjson.dumps({"status": "duplicate", "click_id": "c0", "query_id": "q0", "listing_id": 101,
                                   "shop_id": 7, "amount": 0.0}))  # a retry predicts nothing twice
    t.conversions = {"o1", "o2", "o3"}
    cal = calibration(t)
    assert cal["ctr"]["ratio"] == pytest.approx(0.02 / (8 / 200)) and cal["ctr"]["positives"] == 8
    assert cal["cvr"]["ratio"] == pytest.approx(((0.2 + 0.4) / 2) / (3 / 8)) and cal["cvr"]["n"] == 8
    low, high = cal["cvr"]["interval"]
    assert low < cal["cvr"]["ratio"] < high


def test_achieved_rate_counts_answers_until_the_last_one_not_the_purchase_drain() -> None:
    # 3,000 queries sent over 60 s, each answered 10 ms later; the run then waited 14 s for purchases
    r = _report([(i / 50, 10.0) for i in range(3000)], 3000)
    r.sending_s, r.answered_until_s, r.elapsed_s = 60.0, 60.0 + 0.01, 74.0
    assert r.rate_offered_qps == 50.0
    assert r.rate_achieved_qps == pytest.approx(3000 / 60.01)  # was 3000 / 74 = 40.5: read as "fell behind"
    s = summarize(r, _tally(3000), {}, 60.0)
    assert s.numbers["rate_offered_qps"] == 50.0 and s.numbers["rate_achieved_qps"] == 50.0
    # a backlog: the last answer 30 s after the last query -> the answers came at 2/3 of the offered rate
    r.answered_until_s = 90.0
    assert r.rate_achieved_qps == pytest.approx(3000 / 90)
