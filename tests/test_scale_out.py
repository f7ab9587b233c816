"""Two workers of one app split the partitions; SIGTERM on one hands its partitions over; no query is lost.

Runs on Tansu (consumer-group failover works there; noida once left the survivor rejoining for minutes
after a clean stop, ../shared/README.md). Redelivered outcomes (same query_id twice, faust-streaming
#502) are allowed and reported.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bidder.events import encode
from bidder.settings import Settings
from streams.admin import create_topics
from streams.broker import embedded_broker
from streams.harness.market import World, WorldConfig
from streams.harness.simulator import Simulator
from streams.process import WorkerProcess
from streams.producer import EventProducer
from tests.kafka_helpers import read_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_two_workers_split_and_hand_over(tmp_path: Path) -> None:
    settings = Settings(broker_kind="tansu")
    world = World.generate(WorldConfig(n_shops=10, n_listings=600, n_users=50), seed=3)
    sim = Simulator(world, rng=np.random.default_rng(3), n_candidates=40)
    env = {"BIDDER_BROKER_KIND": "tansu", "BIDDER_APP_ID": "bidder-scale"}
    with embedded_broker("tansu") as broker:
        asyncio.run(create_topics(settings, bootstrap=broker.bootstrap))
        shops, listings = sim.catalog(now=time.time())

        async def send_catalog() -> None:
            async with EventProducer(settings, bootstrap=broker.bootstrap) as p:
                for ev in [*shops, *listings]:
                    await p.send(ev)

        asyncio.run(send_catalog())
        workers = [WorkerProcess.start(bootstrap=broker.bootstrap, log_path=tmp_path / f"w{i}.log", env=env)
                   for i in range(2)]
        try:
            for w in workers:
                w.wait_ready()
            sent: list[str] = []
            stopped_at: list[float] = []

            async def traffic() -> None:
                async with EventProducer(settings, bootstrap=broker.bootstrap) as p:
                    t0 = time.monotonic()
                    for i in range(300):  # 20 q/s for 15 s
                        await asyncio.sleep(max(0.0, t0 + i / 20 - time.monotonic()))
                        q = sim.next_query(now=time.time())
                        await p.send_raw("queries", q.query_id.encode(), encode(q))
                        sent.append(q.query_id)
                        if i == 100:
                            stopped_at.append(time.monotonic())
                            await asyncio.to_thread(workers[0].stop)

            asyncio.run(traffic())
            assert workers[0].process.returncode == 0, workers[0].log_tail()

            def all_answered(rs: list[tuple[str, Any, bytes | None]]) -> bool:
                return set(sent) <= {v["query_id"] for _, v, _ in rs if v}

            recs = asyncio.run(read_until(settings, broker.bootstrap, ["auctions"], all_answered, timeout_s=90))
            ids = [v["query_id"] for _, v, _ in recs if v]
            lost = set(sent) - set(ids)
            redelivered = len(ids) - len(set(ids))
            print(f"sent {len(sent)} answered {len(set(ids))} lost {len(lost)} redelivered {redelivered}")
            assert not lost
            assert workers[1].process.poll() is None
        finally:
            for w in workers:
                w.stop()
