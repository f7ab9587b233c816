"""Idle consumers must not spin: pace the fetches of a broker that does not hold them.

A Kafka broker holds a fetch that finds no data until data arrives or ``fetch.max.wait.ms`` passes, so
an idle consumer sends a few requests a second and a new record still wakes it at once. The embedded
default broker (noida-db 0.2.3) answers an empty fetch at once instead: every idle aiokafka consumer
then sends ~2,000 fetches a second and burns ~95 % of a core in aiokafka's pure-Python protocol code
(measured, ``tests/test_fetch_pacing.py`` pins the broker's behaviour). A worker holds three such
consumers, the demo two more: the idle system used most of both cores before the first query.

This module holds the rule (pure); ``streams/workarounds.py`` applies it to aiokafka. After a fetch that
came back **empty and early** (in less than half the time the consumer asked the broker to hold it), the
next fetch to that broker waits until ``gap`` has passed since the previous one was sent::

    gap = clip(ratio * idle, floor, ceiling)     idle = time since this consumer last received data

A consumer that just received data polls again within ``floor`` (``BIDDER_FETCH_FLOOR_MS``, 4 ms: at
50 queries/s, 4 ms instead of 1 ms cut the worker's CPU per query by ~10 % with the same median
latency, ``docs/realtime.md``; readers off the query path,
such as the replica, set a higher one with :func:`streams.workarounds.pace_consumer`); one idle for a second polls every
``ceiling`` (100 ms, ~10 requests/s, ~1 % of a core). The delay a poll adds to a record is at
most ``gap``, i.e. at most ``ratio`` of the quiet time before it (the first record after a long quiet
spell waits up to ``ceiling``). A broker that holds fetches (Kafka; Tansu, which polls its log) answers
an empty fetch after about the time asked for, so nothing here ever pauses on it.

:func:`streams.workarounds.install_fetch_pacing` wraps aiokafka's ``Fetcher._proc_fetch_request`` once
per process (idempotent); the Kafka client factories in :mod:`streams.kafka_config` call it, so every
consumer of the project (the Faust worker's too) is paced with the process's settings.

>>> p = FetchPacing(max_wait_s=0.010)
>>> p.pause_s(elapsed_s=0.0002, idle_s=0.0)    # just had data: poll again within the floor
0.0008
>>> p.pause_s(elapsed_s=0.0002, idle_s=10.0)   # idle for long: one poll per ceiling
0.0998
>>> p.pause_s(elapsed_s=0.010, idle_s=10.0)    # the broker held the fetch: no pause
0.0
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FetchPacing"]


@dataclass(frozen=True, slots=True)
class FetchPacing:
    """When to send the next fetch after an empty one (all times in seconds)."""

    max_wait_s: float
    """``fetch_max_wait_ms`` the consumer asks the broker to hold an empty fetch"""
    floor_s: float = 0.001
    ceiling_s: float = 0.100
    ratio: float = 0.5
    held_fraction: float = 0.5
    """an empty answer after at least this share of ``max_wait_s`` was held by the broker"""

    def pause_s(self, *, elapsed_s: float, idle_s: float) -> float:
        """Seconds to wait before the next fetch, after an empty one that took ``elapsed_s``, with the
        consumer ``idle_s`` since it last received data. 0 when the broker held the fetch."""
        if elapsed_s >= self.held_fraction * self.max_wait_s:
            return 0.0
        gap = min(max(self.ratio * idle_s, self.floor_s), self.ceiling_s)
        return round(max(gap - elapsed_s, 0.0), 9)
