"""Dead letters always fit on the topic, and a record whose handling raises is isolated, retried a
bounded number of times and dead-lettered once while the rest of its batch is handled."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.decoding import Rejection
from bidder.settings import Settings
from streams.deadletter import DETAIL_MAX_CHARS, dead_letter_record, original_bytes
from streams.outputs import InjectedFaultError, Outputs, WorkerNotReadyError


def _record(value: bytes | None, key: bytes | None = b"k", *, detail: str = "d", max_bytes: int = 900_000,
            keep_bytes: int = 65_536) -> dict[str, Any]:
    raw = dead_letter_record(Rejection("too_large", detail), topic="queries", partition=2, offset=9, key=key,
                             value=value, ts=1.0, max_bytes=max_bytes, keep_bytes=keep_bytes)
    assert len(raw) <= max_bytes
    rec: dict[str, Any] = orjson.loads(raw)
    return rec


@settings(max_examples=40, deadline=None)
@given(value_size=st.integers(0, 2_000_000), key_size=st.integers(0, 300_000), keep=st.integers(0, 100_000))
def test_a_dead_letter_never_passes_its_limit(value_size: int, key_size: int, keep: int) -> None:
    value, key = b"v" * value_size, b"k" * key_size
    max_bytes = Settings(dead_letter_keep_bytes=keep, dead_letter_max_bytes=900_000).dead_letter_max_bytes
    rec = _record(value, key, max_bytes=max_bytes, keep_bytes=keep)
    assert rec["value_size"] == value_size and rec["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert rec["reason"] == "too_large"
    if rec["truncated"]:
        assert original_bytes(rec) == value[:keep]
        assert base64.b64decode(rec["key_b64"]) == key[:keep] and rec["key_size"] == key_size
    else:
        assert original_bytes(rec) == value and base64.b64decode(rec["key_b64"]) == key


def test_the_900_kb_record_that_stopped_every_query() -> None:
    value = b"q" * 900_000  # 1.2 MB as a whole dead letter: over the producer's and the broker's 1 MB
    whole = len(base64.b64encode(value))
    assert whole > 1_000_000
    rec = _record(value)
    assert rec["truncated"] is True and rec["value_size"] == 900_000
    assert original_bytes(rec) == value[:65_536]
    small = _record(b"{}")
    assert small["truncated"] is False and original_bytes(small) == b"{}" and small["value_size"] == 2
    assert _record(None)["value_size"] is None and original_bytes(_record(None)) is None


def test_a_long_detail_is_cut() -> None:
    rec = _record(b"x", detail="y" * 50_000)
    assert len(rec["detail"]) < DETAIL_MAX_CHARS + 40 and rec["detail"].endswith("(50000 characters)")


def test_settings_refuse_a_keep_that_cannot_fit() -> None:
    with pytest.raises(ValueError, match="dead_letter_max_bytes"):
        Settings(dead_letter_keep_bytes=200_000, dead_letter_max_bytes=100_000)


# -- poison records ---------------------------------------------------------------------------------

@dataclass
class _Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class _Event:
    message: _Message


def _runtime(**settings: Any) -> tuple[Outputs, list[tuple[int, Rejection]]]:
    rt = Outputs(settings=Settings(**settings), topics={})
    letters: list[tuple[int, Rejection]] = []

    async def dead_letter(message: Any, rejection: Rejection) -> None:  # the output, recorded
        letters.append((message.offset, rejection))

    rt.dead_letter = dead_letter  # type: ignore[method-assign]
    return rt, letters


def _events(values: Sequence[bytes]) -> list[_Event]:
    return [_Event(_Message("clicks", 0, i, b"1", v)) for i, v in enumerate(values)]


def test_a_poison_record_is_tried_alone_then_dead_lettered_and_the_batch_goes_on() -> None:
    rt, letters = _runtime(poison_attempts=3, fault_marker="BAD")
    handled: list[list[int]] = []

    async def handler(events: Sequence[Any]) -> None:
        handled.append([e.message.offset for e in events])

    events = _events([b"a", b"b BAD", b"c", b"d"])
    asyncio.run(rt.handle_isolating("clicks", rt.with_fault_marker(handler), events))
    # the batch raised before the handler ran; then each record alone; the poison one 3 times
    assert handled == [[0], [2], [3]]
    assert [(o, r.reason) for o, r in letters] == [(1, "handler_error")]
    assert "InjectedFaultError" in letters[0][1].detail and "3 tries" in letters[0][1].detail
    assert rt.counts["poison_records"] == 1


def test_a_record_that_fails_once_is_handled_on_its_retry() -> None:
    rt, letters = _runtime(poison_attempts=3)
    calls: list[list[int]] = []

    async def flaky(events: Sequence[Any]) -> None:  # record 1 fails the first two times it is seen
        calls.append([e.message.offset for e in events])
        if sum(1 in c for c in calls) <= 2 and any(e.message.offset == 1 for e in events):
            raise ValueError("transient")

    asyncio.run(rt.handle_isolating("clicks", flaky, _events([b"a", b"b"])))
    assert calls == [[0, 1], [0], [1], [1]] and letters == []


def test_a_worker_that_cannot_go_on_is_not_a_poison_record() -> None:
    rt, letters = _runtime()

    async def not_ready(events: Sequence[Any]) -> None:
        raise WorkerNotReadyError("billing partition 0 did not catch up")

    with pytest.raises(WorkerNotReadyError):
        asyncio.run(rt.handle_isolating("clicks", not_ready, _events([b"a"])))
    assert letters == []
    assert issubclass(InjectedFaultError, RuntimeError)


@pytest.mark.broker
@pytest.mark.parametrize("case", ["truncated", "unwritable"])
def test_a_900_kb_query_stops_nothing(case: str, tmp_path: Any, small_world: Any) -> None:
    """The record from the field: a 900 KB query (under the broker's 1 MB). With the default limits its
    dead letter is truncated and written; with a limit above what the producer takes, the dead letter
    cannot be written at all: counted, logged with topic/partition/offset, and the agent goes on. Both
    times the next valid query is answered by the same worker process."""
    import time

    import numpy as np

    from bidder.events import encode
    from streams.admin import create_topics
    from streams.broker import embedded_broker
    from streams.harness.simulator import Simulator
    from streams.process import WorkerProcess
    from streams.producer import EventProducer
    from tests.kafka_helpers import read_until

    settings_ = Settings()
    sim = Simulator(small_world, rng=np.random.default_rng(8), n_candidates=40)
    env = {"BIDDER_DEAD_LETTER_MAX_BYTES": "4000000"} if case == "unwritable" else {}
    q_big = sim.next_query(now=time.time())
    big = orjson.loads(encode(q_big))
    big["text"] = "x" * 900_000
    after = sim.next_query(now=time.time())

    def answered(rs: list[tuple[str, Any, bytes | None]]) -> bool:
        return any(v and v.get("query_id") == after.query_id for _, v, _ in rs)

    with embedded_broker("noida") as broker:
        asyncio.run(create_topics(settings_, bootstrap=broker.bootstrap))
        worker = WorkerProcess.start(bootstrap=broker.bootstrap, log_path=tmp_path / "worker.log",
                                     env={"BIDDER_APP_ID": f"bidder-dl-{case}", **env})
        try:
            async def send() -> tuple[int, int]:
                async with EventProducer(settings_, bootstrap=broker.bootstrap) as p:
                    shops, listings = sim.catalog(now=time.time())
                    for ev in [*shops, *listings]:
                        await p.send(ev)
                    await asyncio.to_thread(worker.wait_ready)
                    where = await p.send_raw("queries", q_big.query_id.encode(), orjson.dumps(big))
                    await p.send_raw("queries", after.query_id.encode(), encode(after))
                    return where

            part, off = asyncio.run(send())
            assert answered(asyncio.run(read_until(settings_, broker.bootstrap, ["auctions"], answered)))
            assert worker.process.poll() is None
            _, metrics = worker.get("/metrics")
            letters = asyncio.run(read_until(settings_, broker.bootstrap, ["dead-letters"], bool,
                                             timeout_s=3 if case == "unwritable" else 30))
        finally:
            worker.stop()
    mine = [v for _, v, _ in letters if v and v["offset"] == off and v["partition"] == part]
    if case == "truncated":
        assert len(mine) == 1 and mine[0]["truncated"] is True and mine[0]["reason"] == "too_large"
        assert mine[0]["value_size"] == len(orjson.dumps(big))
    else:
        assert mine == []
        assert 'bidder_dead_letter_failures_total{topic="queries"} 1.0' in metrics
        assert f"queries[{part}]@{off}" in worker.log_tail(200_000)


def test_a_record_is_dead_lettered_once_but_a_new_record_at_a_reused_offset_is_not_skipped() -> None:
    """A handler tried again refuses the same record again: one dead letter. A memory-only broker that
    came back empty hands the same offsets out again: a different record there gets its own."""
    rt = Outputs(settings=Settings(), topics={})
    written: list[bytes] = []

    async def send(topic: str, key: bytes | None, value: bytes, **_: Any) -> Any:  # the output, recorded
        written.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    rt.send = send  # type: ignore[method-assign]

    async def go() -> None:
        reject = Rejection("invalid_json", "x")
        await rt.dead_letter(_Message("clicks", 0, 5, b"1", b"{bad"), reject)
        await rt.dead_letter(_Message("clicks", 0, 5, b"1", b"{bad"), reject)
        await rt.dead_letter(_Message("clicks", 0, 5, b"1", b"{other"), reject)

    asyncio.run(go())
    assert [original_bytes(orjson.loads(w)) for w in written] == [b"{bad", b"{other"]
    assert rt.counts["dead_letter_repeats"] == 1
