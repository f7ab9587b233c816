"""T2: the broker restarts mid-stream, on **noida-db** (started by the scenario on its own data dir).

noida-db because it is the embedded broker that persists across a restart; Tansu is memory-only and
comes back empty (docs/reliability.md says what that means). The harness producer retries every
unacknowledged record with the same bytes (event ids make a repeat harmless) and replaces its
idempotent producer when the broker forgot its sequence (OutOfOrderSequenceNumber).

Measured here (docs/reliability.md): noida-db loses the last acknowledged records across its own
restart (about one on SIGTERM, ~100 ms of writes on SIGKILL) and hands their offsets out again. No
bidder can keep what the broker dropped after acknowledging it, so these tests assert what the
bidder can guarantee on such a broker: no click charged twice, no budget overspent (the ledger fold
now applies its own writes even when an offset is handed out twice), no stuck consumer (aiokafka
#1154), recovery (reported against a 30 s target) and every query sent after the restart
answered; the figures report what was lost and whether the broker lost it.

``t2tansu_stay`` restarts the **memory-only Tansu** broker instead: it comes back with no topics,
records, groups or offsets. The harness recreates the topics and re-sends the catalog (what a
deployment would do) and leaves the worker running: the worker must find the truncated logs by
itself (fetch high watermark below its position: streams/replicator.py for its replica, the
``consumer_lag`` timer in streams/watchdogs.py for its group partitions), read them again from the start
and keep serving, with the spend it knew from the lost ledger still counted against the budgets.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from streams.harness.chaos import run_scenario

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scenario", ["t2", "t2kill"])
def test_broker_restart_recovers_and_keeps_the_money_invariants(scenario: str) -> None:
    f = asyncio.run(run_scenario(scenario))
    print(f.text())
    assert f.ok, f.text()
    assert "restart" in str(f.extra["timeline"])
    assert f.duplicate_charges == 0 and f.overspent_shops == 0, f.text()
    # recovered (a figure: recovery_s, recovery_within_target; the scenario fails only past 3 x the 30 s
    # target, a stuck consumer: a busy CI machine once read 30.7 s where a quiet one reads ~4 s)
    assert f.drain_ok and f.recovery_s is not None, f.text()
    answered, sent = map(int, str(f.extra["answered_after_restart"]).split("/"))
    assert sent > 100 and answered == sent, f.text()
    assert f.worker_exits_unexpected == 0
    assert f.false_accepts == 0, f.text()


@pytest.mark.broker
def test_memory_only_broker_restart_is_found_and_served_through(tmp_path: Path) -> None:
    # Run in its own process: in the pytest process, after this scenario, Python 3.11's AST module
    # state was broken in 5 of 8 runs ("SystemError: AST constructor recursion depth mismatch", CPython
    # gh-106905, seen by pytest as pytest-dev/pytest#10763), which crashed pytest's session finish
    # after the test had passed (a /tmp probe found it broken ~1 s after the topics were recreated,
    # cause inside the interpreter not isolated). The scenario's own process ends right after.
    figures = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "-m", "streams.harness.chaos", "t2tansu_stay", "--workdir",
                           str(tmp_path / "run"), "--json", str(figures)],
                          capture_output=True, text=True, timeout=280, check=False)
    assert figures.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    f = json.loads(figures.read_text())
    extra = f["extra"]
    text = json.dumps(f, indent=1, default=str)
    print(text)
    assert f["ok"] and proc.returncode == 0, text
    # the broker really came back empty, and the worker's replica found the truncated logs (its group
    # consumer needs the reset only when its rejoin did not revoke the partitions: reported, varies)
    assert extra["acked_inputs_lost_by_broker"] > 100, text
    assert extra["worker_counters"].get('bidder_log_truncations_total{consumer="replica"}', 0) > 0, text
    # it kept serving: every query sent once the topics and the catalog were back was answered,
    # the consumers drained (no one stuck past the end of a new log), recovered
    answered, sent = map(int, str(extra["answered_after_restart"]).split("/"))
    assert sent > 100 and answered == sent, text
    assert f["drain_ok"] and f["recovery_s"] is not None, text  # a figure; f["ok"] fails a stuck one
    # the money: nothing charged twice and no budget overspent in the new ledger, nor in the new
    # ledger together with the lines of the lost one that the worker had folded before the restart
    assert f["duplicate_charges"] == 0 and f["overspent_shops"] == 0, text
    assert extra["worker_restarts_after_exit"] == 0 and f["worker_exits_unexpected"] == 0, text
    assert extra["combined_checked"] and extra["ledger_lines_before_restart_seen"] > 0, text
    assert extra["combined_duplicate_charges"] == 0 and extra["combined_overspent_shops"] == 0, text
    assert f["false_accepts"] == 0, text
