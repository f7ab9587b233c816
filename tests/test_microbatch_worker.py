"""The worker's micro-batching path: queries within budget are priced; queries that cannot meet their
deadline are shed with a reason (an outcome without winners), never silently dropped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bidder.events import Query, encode
from bidder.settings import Settings
from streams.admin import create_topics
from streams.broker import embedded_broker
from streams.harness.simulator import Simulator
from streams.process import WorkerProcess
from streams.producer import EventProducer
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.broker


def test_budget_respected_and_overload_shed(settings: Settings, small_world: Any, tmp_path: Path) -> None:
    sim = Simulator(small_world, rng=np.random.default_rng(4), n_candidates=80)
    with embedded_broker("noida") as broker:
        asyncio.run(create_topics(settings, bootstrap=broker.bootstrap))
        shops, listings = sim.catalog(now=time.time())
        worker = WorkerProcess.start(bootstrap=broker.bootstrap, log_path=tmp_path / "w.log",
                                     env={"BIDDER_MICROBATCH_ENABLED": "true", "BIDDER_APP_ID": "bidder-mb"})
        try:
            async def send() -> None:
                async with EventProducer(settings, bootstrap=broker.bootstrap) as p:
                    for ev in [*shops, *listings]:
                        await p.send(ev)

            asyncio.run(send())
            worker.wait_ready()
            ok = [Query(**{**{s: getattr(q, s) for s in Query.__slots__}, "latency_budget_ms": 5000.0})
                  for q in (sim.next_query(now=time.time()) for _ in range(10))]
            # a query that is already past its budget when it arrives cannot be priced in time
            late = [Query(**{**{s: getattr(q, s) for s in Query.__slots__}, "ts": time.time() - 2.0,
                             "latency_budget_ms": 100.0})
                    for q in (sim.next_query(now=time.time()) for _ in range(5))]

            async def send_queries() -> None:
                async with EventProducer(settings, bootstrap=broker.bootstrap) as p:
                    for q in [*ok, *late]:
                        await p.send_raw("queries", q.query_id.encode(), encode(q))

            asyncio.run(send_queries())
            ids = {q.query_id for q in [*ok, *late]}
            recs = asyncio.run(read_until(settings, broker.bootstrap, ["auctions"],
                                          lambda rs: ids <= {v["query_id"] for _, v, _ in rs if v}))
            out = {v["query_id"]: v for _, v, _ in recs if v}
            assert ids <= set(out)
            for q in ok:
                assert "shed" not in out[q.query_id], out[q.query_id].get("shed")
                assert out[q.query_id]["winners"]
            for q in late:
                assert out[q.query_id]["winners"] == []
                assert out[q.query_id]["shed"].startswith("deadline")
        finally:
            worker.stop()
