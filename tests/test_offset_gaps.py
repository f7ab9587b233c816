"""GapTracker: every offset a reader skipped is named once, and nothing else."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bidder.replica.offset_gaps import Gap, GapTracker


@given(n=st.integers(min_value=1, max_value=300), skipped=st.sets(st.integers(min_value=1, max_value=299)))
def test_gaps_cover_exactly_the_skipped_offsets(n: int, skipped: set[int]) -> None:
    delivered = [o for o in range(n) if o not in skipped]
    tracker = GapTracker()
    named: list[int] = []
    for o in delivered:
        gap = tracker.update("clicks", 2, o)
        if gap is not None:
            assert gap.topic == "clicks" and gap.partition == 2 and gap.end == o and gap.size > 0
            named.extend(range(gap.start, gap.end))
    # offsets after the last delivered record are not revealed yet: no later record shows them
    last = delivered[-1] if delivered else -1
    assert named == sorted(o for o in skipped if o < last)
    assert tracker.offsets_skipped == len(named)


def test_partitions_are_independent_and_rewinds_are_not_gaps() -> None:
    t = GapTracker()
    assert t.update("clicks", 0, 0) is None
    assert t.update("clicks", 1, 40) is None  # the first record of a partition sets its start
    assert t.update("clicks", 0, 1) is None
    assert t.update("clicks", 1, 42) == Gap("clicks", 1, 41, 42)
    assert t.update("clicks", 1, 10) is None  # redelivered after a rebalance: the sequence restarts
    assert t.update("clicks", 1, 11) is None
    assert t.update("queries", 0, 3) is None
    assert t.gaps_seen == 1


def test_forget_and_expect() -> None:
    t = GapTracker().expect("billing", 0, 0)
    assert t.update("billing", 0, 2) == Gap("billing", 0, 0, 2)  # a hole at the very start is found
    t.forget({("billing", 0)})
    assert t.update("billing", 0, 9) is None  # a new assignment starts wherever it starts
    t.forget()
    assert t.update("billing", 0, 20) is None
