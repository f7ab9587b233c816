"""Shared fixtures: one real Kafka-protocol broker per test session, topics created once.

``BIDDER_KAFKA_BOOTSTRAP`` set: the tests use that cluster and start nothing.
``BIDDER_TEST_BROKER`` picks the embedded broker (default ``noida``); tests that need a particular
broker's behaviour (group failover on Tansu) start their own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bidder.settings import Settings
from streams.admin import create_topics
from streams.broker import embedded_broker


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def bootstrap(settings: Settings) -> Iterator[str]:
    if settings.kafka_bootstrap:
        asyncio.run(create_topics(settings, bootstrap=settings.kafka_bootstrap))
        yield settings.kafka_bootstrap
        return
    kind = os.environ.get("BIDDER_TEST_BROKER", "noida")
    with embedded_broker(kind) as broker:  # type: ignore[arg-type]
        asyncio.run(create_topics(settings, bootstrap=broker.bootstrap))
        yield broker.bootstrap


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


SMALL_WORLD = {"n_shops": 20, "n_listings": 2000, "n_users": 500}


@pytest.fixture(scope="session")
def small_world():  # type: ignore[no-untyped-def]
    from streams.harness.market import World, WorldConfig

    return World.generate(WorldConfig(**SMALL_WORLD), seed=11)


@pytest.fixture(scope="session")
def worker(bootstrap: str, settings: Settings, small_world, artifacts: Path):  # type: ignore[no-untyped-def]
    """One bidder worker for the session, started after the small world's catalog is on the topics."""
    import time

    import numpy as np

    from streams.harness.simulator import Simulator
    from streams.process import WorkerProcess
    from streams.producer import EventProducer

    sim = Simulator(small_world, rng=np.random.default_rng(0))
    shops, listings = sim.catalog(now=time.time())

    async def send_catalog() -> None:
        async with EventProducer(settings, bootstrap=bootstrap) as producer:
            for ev in [*shops, *listings]:
                await producer.send(ev)

    asyncio.run(send_catalog())
    proc = WorkerProcess.start(bootstrap=bootstrap, log_path=artifacts / "worker.log",
                               env={"BIDDER_APP_ID": "bidder-test"})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
