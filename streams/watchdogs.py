"""The worker's watch over its consumer group: lag, truncated logs and stalled commits (every 5 s).

Both guard against broker and client defects that no error reports (a log that came back shorter, a
group coordinator that never returns); each reaches faust's private offset books through
:mod:`streams.workarounds`. They used to be closures inside ``streams.app.build_app``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from streams.replicator import Replicator
from streams.workarounds import forget, group_offsets

__all__ = ["GroupWatchdog"]

log = logging.getLogger(__name__)


@dataclass
class GroupWatchdog:
    """Lag gauge, truncation reset and commit-stall exit for one worker's group consumer."""

    app: Any
    """the Faust app (its ``consumer``)"""
    rt: Any
    """the worker's ``streams.runtime.Runtime`` (counts, metrics)"""
    replica: Replicator
    stall_s: float
    _offsets: dict[Any, int] | None = field(default=None, init=False)
    _progress_at: float = field(default_factory=time.monotonic, init=False)

    async def check(self) -> None:
        """Records in this worker's assigned partitions past what its agents have read; and truncation.

        A group partition whose fetch high watermark is below what the agents already read or
        committed lost records: the memory-only Tansu broker came back empty (it answers fetches past
        the end of the new log with no error and a small high watermark, so aiokafka never resets),
        or an unclean leader election truncated it (on Kafka that fetch gets ``OffsetOutOfRange`` and
        aiokafka resets to the beginning by itself). faust-streaming then drops every record below its
        ``_read_offset`` ("DROPPED MESSAGE ROFF" in ``Consumer._drain_messages``) and ``Consumer.ack``
        ignores offsets below ``_committed_offset``: the agents would skip the new log until its
        offsets passed the old ones and never commit it (the stuck drain of ``t2tansu_stay``).

        Reset, not exit: the partition is sought to its beginning (``seek_wait``, which faust uses
        itself) after faust's per-partition bookkeeping is dropped as on a revoke. The process keeps
        its replica fold, so spend it knew before the broker lost it still counts against budgets;
        a restarted process would know only what the broker still has. Measured with ``t2tansu_stay``
        (docs/reliability.md). A partition still past the end one round after its reset fails
        ``/healthz`` and the process exits (70) so that its supervisor restarts it.
        """
        consumer: Any = self.app.consumer
        rt, replica = self.rt, self.replica
        lag: dict[str, int] = {}

        def past_end() -> dict[Any, tuple[int, int]]:
            found: dict[Any, tuple[int, int]] = {}
            read, committed = group_offsets(consumer)
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                if high is None:
                    continue
                seen = max(read.get(tp, 0), committed.get(tp, 0))  # ``read`` may be one low (group_offsets)
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, int(high) - seen)
                if seen > int(high):
                    found[tp] = (int(high), seen)
            return found

        suspects = past_end()
        await self.watch_commits(consumer)
        await self.watch_aggregator()
        for topic, n in lag.items():
            rt.metrics.consumer_lag.labels(topic=topic).set(n)
        new = replica.truncations - rt.counts["replica_truncations_counted"]
        if new > 0:
            rt.metrics.log_truncations.labels(consumer="replica").inc(new)
            rt.counts["replica_truncations_counted"] += new
        if not suspects:
            return
        # right after a Kafka leader change the new leader's high watermark may lag for a moment
        await asyncio.sleep(2.0)
        confirmed = {tp: v for tp, v in past_end().items() if tp in suspects}
        if not confirmed:
            return
        if rt.counts["group_reset_at"] and time.monotonic() - rt.counts["group_reset_at"] < 15.0:
            rt.counts["group_past_end"] = len(confirmed)
            await rt.exit_for_restart("group partitions %s still past their log end after a reset; exiting so the "
                                      "worker is restarted", sorted(f"{tp.topic}[{tp.partition}]" for tp in confirmed))
        for tp, (high, seen) in confirmed.items():
            log.warning("group: %s[%d] high watermark %d is below the %d records already read: the log was "
                        "truncated (broker came back empty / unclean leader election); reading it again "
                        "from the start", tp.topic, tp.partition, high, seen)
            forget(consumer, tp)
        await consumer.seek_wait(dict.fromkeys(confirmed, 0))
        rt.counts["group_truncations"] += len(confirmed)
        rt.counts["group_reset_at"] = int(time.monotonic())
        rt.metrics.log_truncations.labels(consumer="group").inc(len(confirmed))

    async def watch_aggregator(self) -> None:
        """Exit when the embedded aggregator's fold loop ended by itself (a defect it could not survive, such as
        a group error aiokafka raises from ``getmany``): this worker's share of the rolling features would
        stop, and only a new process joins the aggregator group again."""
        aggregator = self.rt.aggregator
        if aggregator is not None and aggregator.ended:
            self.rt.counts["aggregator_ended"] = 1
            await self.rt.exit_for_restart("the aggregator's fold loop ended (%r); exiting so the worker is "
                                           "restarted", aggregator.ended_by())

    async def watch_commits(self, consumer: Any) -> None:
        """Exit when the group's commits stopped while the agents kept reading.

        After a broker restart aiokafka's group coordinator sometimes never comes back (the member
        neither heartbeats nor rejoins: aiokafka #1154; measured on noida-db in the t2 scenario, about one
        run in four): fetching and the agents go on, but no offset is committed again, so a later restart
        would reprocess everything since and the committed lag the autoscaler reads only grows. Only a
        new consumer recovers, so past ``stall_s`` (``BIDDER_COMMIT_STALL_S``) without commit progress
        while records read are uncommitted, ``/healthz`` fails and the process exits (70) for its
        supervisor to restart it (effects are idempotent: the reprocessed records change nothing)."""
        now = time.monotonic()
        read, committed = group_offsets(consumer)
        if committed != self._offsets:
            self._offsets, self._progress_at = committed, now
            return
        behind = sorted(f"{tp.topic}[{tp.partition}]" for tp, n in read.items() if n > committed.get(tp, 0))
        stalled = now - self._progress_at
        if behind and stalled > self.stall_s:
            self.rt.counts["commit_stalled"] = 1
            await self.rt.exit_for_restart("no offset committed for %.0fs while %s have records read and not committed "
                                           "(the group coordinator did not come back: aiokafka #1154); exiting so "
                                           "the worker is restarted", stalled, behind)
