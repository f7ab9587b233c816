"""Idle consumers do not spin (``bidder/replica/fetch_pacing.py``): the rule, and the broker behaviour it answers.

The broker tests run against the session broker (noida-db by default, or ``BIDDER_KAFKA_BOOTSTRAP``):
they measure whether it holds an empty fetch, count the fetches an idle paced consumer sends, and
check that a record produced to an idle consumer is still delivered.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from hypothesis import given
from hypothesis import strategies as st

from bidder.replica.fetch_pacing import FetchPacing
from bidder.settings import Settings
from streams.kafka_config import aiokafka_consumer_kwargs, aiokafka_producer_kwargs
from streams.workarounds import fetch_pacing_installed, fetches_sent, pace_consumer
from tests.test_gap_repair import new_topic

# --- the rule ----------------------------------------------------------------------------------------

times = st.floats(min_value=0.0, max_value=30.0, allow_nan=False)


@given(max_wait=st.floats(min_value=0.001, max_value=5.0), elapsed=times, idle=times)
def test_pause_never_exceeds_the_ceiling_and_never_pauses_a_held_fetch(max_wait: float, elapsed: float,
                                                                      idle: float) -> None:
    p = FetchPacing(max_wait_s=max_wait)
    pause = p.pause_s(elapsed_s=elapsed, idle_s=idle)
    assert 0.0 <= pause <= p.ceiling_s
    if elapsed >= p.held_fraction * max_wait:
        assert pause == 0.0  # a broker that holds fetches (Kafka) is never slowed down
    else:
        # the next fetch goes out no later than gap after the previous one was sent
        gap = min(max(p.ratio * idle, p.floor_s), p.ceiling_s)
        assert elapsed + pause == pytest.approx(max(gap, elapsed), abs=1e-8)


@given(elapsed=st.floats(min_value=0.0, max_value=0.004), a=times, b=times)
def test_a_longer_quiet_spell_never_polls_sooner(elapsed: float, a: float, b: float) -> None:
    p = FetchPacing(max_wait_s=0.010)
    lo, hi = sorted((a, b))
    assert p.pause_s(elapsed_s=elapsed, idle_s=lo) <= p.pause_s(elapsed_s=elapsed, idle_s=hi)


def test_the_delay_added_to_a_record_is_bounded_by_the_ratio_of_the_quiet_time() -> None:
    p = FetchPacing(max_wait_s=0.010, ratio=0.5)
    # 40 ms of quiet: the poll after it waited 20 ms at most
    assert p.pause_s(elapsed_s=0.0, idle_s=0.040) == pytest.approx(0.020)


# --- against the broker ------------------------------------------------------------------------------


async def _consumer(settings: Settings, bootstrap: str, topic: str) -> AIOKafkaConsumer:
    kwargs = aiokafka_consumer_kwargs(settings, bootstrap=bootstrap)  # installs the pacing
    kwargs.pop("session_timeout_ms")
    kwargs.pop("heartbeat_interval_ms")
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **kwargs)
    await consumer.start()
    for _ in range(50):
        if consumer.partitions_for_topic(topic):
            break
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    consumer.assign([TopicPartition(topic, 0)])
    return consumer


async def _empty_fetch_seconds(consumer: AIOKafkaConsumer, topic: str, *, max_wait_ms: int) -> float:
    """One raw Fetch at the end of an empty partition, asking the broker to hold it ``max_wait_ms``."""
    client: Any = consumer._client
    node = client.cluster.leader_for_partition(TopicPartition(topic, 0))
    request = FetchRequest(max_wait_ms, 1, 1 << 20, 0, [(topic, [(0, 0, 1 << 20)])])
    t0 = time.monotonic()
    await client.send(node, request)
    return time.monotonic() - t0


@pytest.mark.broker
def test_broker_behaviour_and_an_idle_consumer_polls_at_most_once_per_ceiling(settings: Settings,
                                                                              bootstrap: str) -> None:
    async def run() -> tuple[float, int, float]:
        topic = await new_topic(settings, bootstrap)
        consumer = await _consumer(settings, bootstrap, topic)
        fetcher: Any = consumer._fetcher
        calls = {"n": 0}
        paced = fetcher._proc_fetch_request

        async def counting(*args: Any) -> Any:
            calls["n"] += 1
            return await paced(*args)

        fetcher._proc_fetch_request = counting
        try:
            held = await _empty_fetch_seconds(consumer, topic, max_wait_ms=400)
            await asyncio.sleep(0.5)  # the quiet spell reaches the ceiling
            calls["n"] = 0
            t0 = time.monotonic()
            got = await consumer.getmany(timeout_ms=2000)
            idle_s = time.monotonic() - t0
            return held, calls["n"], idle_s if not got else float("nan")
        finally:
            await consumer.stop()

    held, fetches, idle_s = asyncio.run(run())
    policy = fetch_pacing_installed()
    assert policy is not None
    # a broker that holds (Kafka) answers after ~400 ms; the embedded noida-db answers at once (the gap
    # this module exists for: when a new version holds, this line says the work-around can go)
    print(f"empty fetch answered after {held * 1000:.1f} ms (asked to hold 400 ms); "
          f"{fetches} fetches in {idle_s:.2f} s idle")
    if not settings.kafka_bootstrap and os.environ.get("BIDDER_TEST_BROKER", "noida") == "noida":
        assert held < 0.2, "noida-db now holds empty fetches: bidder/replica/fetch_pacing.py may be removed"
    # paced: about one fetch per ceiling (100 ms); unpaced, noida-db took ~2,000 a second here
    assert fetches <= idle_s / policy.ceiling_s * 2 + 4


@pytest.mark.broker
def test_a_record_reaches_an_idle_paced_consumer(settings: Settings, bootstrap: str) -> None:
    async def run() -> list[bytes]:
        topic = await new_topic(settings, bootstrap)
        consumer = await _consumer(settings, bootstrap, topic)
        producer = AIOKafkaProducer(**aiokafka_producer_kwargs(settings, bootstrap=bootstrap))
        await producer.start()
        try:
            await consumer.getmany(timeout_ms=500)  # idle long enough to poll at the ceiling
            await producer.send_and_wait(topic, b"after-a-quiet-spell", key=b"k")
            out: list[bytes] = []
            deadline = time.monotonic() + 10
            while not out and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(r.value for r in records if r.value is not None)
            return out
        finally:
            await producer.stop()
            await consumer.stop()

    assert asyncio.run(run()) == [b"after-a-quiet-spell"]


@pytest.mark.broker
def test_a_busy_paced_consumer_fetches_at_most_once_per_floor_and_gets_every_record(settings: Settings,
                                                                                    bootstrap: str) -> None:
    """``pace_consumer(busy=True)`` (the replica once caught up): a record every ~10 ms, and still one fetch per
    floor at most. Without it a fetch that brought data is followed by another at once (about twice as many on
    noida, where that one comes back empty and then waits the floor)."""
    floor_s = 0.1

    async def run() -> tuple[int, float, list[bytes]]:
        topic = await new_topic(settings, bootstrap)
        consumer = await _consumer(settings, bootstrap, topic)
        producer = AIOKafkaProducer(**aiokafka_producer_kwargs(settings, bootstrap=bootstrap))
        await producer.start()
        sent = [f"r{i}".encode() for i in range(150)]

        async def produce() -> None:
            for value in sent:
                await producer.send_and_wait(topic, value, key=b"k")
                await asyncio.sleep(0.01)

        try:
            pace_consumer(consumer, floor_s=floor_s, busy=True)
            out: list[bytes] = []
            fetches0, t0 = fetches_sent(consumer), time.monotonic()
            producing = asyncio.create_task(produce())
            deadline = t0 + 60
            while len(out) < len(sent) and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(r.value for r in records if r.value is not None)
            await producing
            return fetches_sent(consumer) - fetches0, time.monotonic() - t0, out
        finally:
            await producer.stop()
            await consumer.stop()

    fetches, wall_s, out = asyncio.run(run())
    print(f"{fetches} fetches in {wall_s:.2f} s for {len(out)} records")
    assert out == [f"r{i}".encode() for i in range(150)]  # every record, in order
    assert fetches <= wall_s / floor_s + 2
