"""``bidder worker``: one Faust worker process, production entry point (settings from the environment)."""

from __future__ import annotations

import asyncio
import logging

import faust

from bidder.settings import Settings
from streams.app import build_app

__all__ = ["run_worker"]


def run_worker(settings: Settings, *, bootstrap: str | None = None) -> None:
    """Run until SIGTERM/SIGINT. ``bootstrap`` overrides ``settings.kafka_bootstrap`` (embedded broker)."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app, _ = build_app(settings, bootstrap=bootstrap or settings.kafka_bootstrap)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
