"""The CPU meter (``streams.cpu_meter``): a name is one process or a group of them, summed, with each member's
figures kept."""

from __future__ import annotations

import os
import time

from streams.cpu_meter import CpuMeter


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_group_is_the_sum_of_its_members_and_keeps_each_one() -> None:
    me = os.getpid()
    meter = CpuMeter({"one": me, "group": [me, me], "remote": None}).start()
    _burn(0.1)
    seconds = meter.stop()
    one, group = seconds["one"], seconds["group"]
    assert one is not None and group is not None and seconds["remote"] is None
    assert one >= 0.07 and abs(group - 2 * one) < 0.03  # psutil counts in clock ticks (10 ms)
    assert len(meter.parts["group"]) == 2 and meter.parts["one"] == [one]
    shares, per_query = meter.part_shares("group"), meter.part_ms_per("group", 10)
    assert len(shares) == 2 and all(s is not None and s > 0 for s in shares)
    assert per_query[0] is not None and abs(per_query[0] - one * 100.0) < 3.0
    assert meter.ms_per(0)["group"] is None and meter.part_ms_per("remote", 10) == []
    assert set(meter.share_of_core()) == {"one", "group", "remote"}
