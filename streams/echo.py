"""An echo agent with the bidder's exact client settings: the floor the Kafka path puts under latency.

``bench-echo-in`` -> batches(batch_max, within) -> ``bench-echo-out``, same Faust app options, same fetch
wait, same producer settings as the bidder's ``bid`` agent, and no work in between.
Run as ``python -m streams.echo`` with ``BIDDER_KAFKA_BOOTSTRAP`` set.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from bidder.settings import Settings
from streams.batching import batches
from streams.kafka_config import faust_app_kwargs
from streams.workarounds import use_fetch_max_wait

__all__ = ["ECHO_IN", "ECHO_OUT", "build_echo_app"]

ECHO_IN = "bench-echo-in"
ECHO_OUT = "bench-echo-out"


def build_echo_app(settings: Settings, *, bootstrap: str | None) -> faust.App:
    use_fetch_max_wait(settings.fetch_max_wait_ms)
    app = faust.App(f"{settings.app_id}-echo", **faust_app_kwargs(settings, bootstrap=bootstrap),
                    value_serializer="raw", key_serializer="raw", store="memory://", web_enabled=False,
                    consumer_auto_offset_reset="latest", topic_allow_declare=False, topic_disable_leader=True,
                    producer_acks=-1, stream_wait_empty=False)
    src = app.topic(ECHO_IN, value_serializer="raw", key_serializer="raw")
    dst = app.topic(ECHO_OUT, value_serializer="raw", key_serializer="raw")

    async def echo(stream: Any) -> None:
        async for events in batches(stream, settings.batch_max, within_s=settings.batch_within_s):
            futs = [await dst.send(key=ev.message.key, value=ev.message.value, force=True) for ev in events]
            await asyncio.gather(*futs)

    app.agent(src, name="bidder.echo", concurrency=1)(echo)
    return app


if __name__ == "__main__":
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    s = Settings()
    app = build_echo_app(s, bootstrap=s.kafka_bootstrap)
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
