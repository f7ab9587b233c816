"""Offset gaps in what a consumer reads: records a fetch skipped.

On Kafka a non-compacted topic written without transactions has no holes: every offset below the
high watermark holds a record, and a consumer reads them in order. The embedded Tansu broker breaks
that under concurrent producers to one partition: a fetch can return the record at ``n + 1`` before
the record at ``n`` is visible, the consumer's position moves past ``n``, and ``n`` is never read
(measured: 2 of 12,000 records skipped by a tailing aiokafka consumer in 1 of 4 runs with 4 producers
at 100 records/s each; a later re-read returned both at their offsets). A skipped click is a click
never billed, a skipped ledger line is spend a replica never knew.

:class:`GapTracker` is the pure half of the repair: it follows the offsets one reader delivers per
partition and names each hole ``[start, end)`` the moment a later record shows it. The reader
(``streams.gap_repair``) then fetches that range again. On a real cluster this does not happen on our
topics: holes appear only where records were compacted away (the catalog topics, which readers do not
track) or where transaction markers sit (our producers use none); a marker is reported ``absent``.

>>> t = GapTracker()
>>> t.update("clicks", 0, 7) is None      # the first offset seen sets the start
True
>>> t.update("clicks", 0, 8) is None
True
>>> t.update("clicks", 0, 11)             # 9 and 10 were skipped
Gap(topic='clicks', partition=0, start=9, end=11)
>>> t.update("clicks", 0, 5) is None      # a rewind (redelivery, a seek) restarts the sequence
True
>>> t.gaps_seen
1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

__all__ = ["Gap", "GapTracker"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets ``start`` (inclusive) to ``end`` (exclusive) of one partition that a reader skipped."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


class GapTracker:
    """The next offset expected per ``(topic, partition)`` for one reader, and the holes it saw.

    ``update`` returns the :class:`Gap` a record reveals, or ``None``. A record at or below what was
    already read (redelivery after a rebalance, a seek back) is not a gap: the sequence restarts
    there. ``forget`` drops partitions whose assignment changed: the first record after a new
    assignment starts at the committed offset, which this tracker does not know.
    """

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], int] = {}
        self._gaps_seen = 0
        self._offsets_skipped = 0

    def update(self, topic: str, partition: int, offset: int) -> Gap | None:
        key = (topic, partition)
        expected = self._next.get(key)
        self._next[key] = offset + 1
        if expected is None or offset <= expected:
            return None
        self._gaps_seen += 1
        self._offsets_skipped += offset - expected
        return Gap(topic, partition, expected, offset)

    def expect(self, topic: str, partition: int, offset: int) -> Self:
        """Say where the next record of a partition must be (a reader that seeks, or a known start)."""
        self._next[(topic, partition)] = offset
        return self

    def forget(self, partitions: set[tuple[str, int]] | None = None) -> Self:
        """Drop what is known of ``partitions`` (all of them when ``None``)."""
        if partitions is None:
            self._next.clear()
        else:
            for key in partitions:
                self._next.pop(key, None)
        return self

    @property
    def gaps_seen(self) -> int:
        return self._gaps_seen

    @property
    def offsets_skipped(self) -> int:
        return self._offsets_skipped
