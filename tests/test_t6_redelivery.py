"""T6: forced redelivery, on **noida-db** (started here): rewind the worker group to offset 0, replay.

noida-db because it keeps committed offsets exactly (the rewind is an OffsetCommit into the group
while no worker is in it) and has correct end offsets for the drain. After a normal run is drained,
the worker is stopped, every input partition's committed offset is set to 0 and the worker started
again: it re-reads every query, click, purchase, auction and catalog record. Zero extra charges,
the same ledger decisions, the same conversions and the same set of labels must result; repeats of
outcomes, ledger ``duplicate`` lines and dead letters are counted as redelivered.
"""

from __future__ import annotations

import asyncio

import pytest

from streams.harness.chaos import run_scenario

pytestmark = pytest.mark.slow


def test_replaying_everything_changes_no_charge_label_or_counter() -> None:
    f = asyncio.run(run_scenario("t6"))
    print(f.text())
    assert f.ok, f.text()
    assert int(f.extra["records_replayed"]) > 300, f.text()
    before, after = str(f.extra["label_keys_before/after"]).split("/")
    assert before == after, f.text()
    assert f.redelivered > 0 and f.duplicate_charges == 0 and f.overspent_shops == 0, f.text()
    assert f.oracle_mismatches == 0 and f.lost == 0 and f.false_rejects == 0, f.text()
