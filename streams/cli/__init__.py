"""The ``bidder`` command line (click). Each command is a thin shell over a library function.

The commands live beside it, by what they drive: :mod:`streams.cli.cluster` (broker, topics, simulate,
produce, worker, aggregate, demo), :mod:`streams.cli.bench`, :mod:`streams.cli.chaos`, :mod:`streams.cli.drift`
and :mod:`streams.cli.lifecycle` (dataset, train, train-models, scoreboard, promote, shadow). Each loads what
it runs (the harness, Kafka clients, training code) inside its body, so ``bidder --help`` loads none of it."""

from __future__ import annotations

import click

from bidder.settings import Settings
from streams.cli.bench import bench
from streams.cli.chaos import chaos
from streams.cli.cluster import (
    aggregate,
    broker,
    demo,
    kafka_bootstrap,
    produce,
    simulate,
    stop_children_on_signals,
    topics,
    worker,
)
from streams.cli.drift import drift
from streams.cli.lifecycle import dataset, promote, scoreboard, shadow, train, train_models

__all__ = ["kafka_bootstrap", "main", "stop_children_on_signals"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """Streaming real-time ad bidder. Settings come from BIDDER_* environment variables."""
    ctx.obj = Settings()


for _command in (broker, topics, simulate, produce, worker, aggregate, demo, bench, chaos, drift, dataset, train,
                 train_models, scoreboard, promote, shadow):
    main.add_command(_command)
