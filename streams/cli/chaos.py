"""``bidder chaos NAME``: one fault scenario of the reliability harness, from its own broker to its figures."""

from __future__ import annotations

from pathlib import Path

import click

from streams.cli.cluster import stop_children_on_signals

__all__ = ["SCENARIO_NAMES", "chaos"]

SCENARIO_NAMES = ("t1", "t2", "t2kill", "t2tansu", "t2tansu_stay", "t4", "t5", "t6")
"""``sorted(streams.harness.chaos.SCENARIOS)``, named here so ``--help`` loads no harness (a test keeps them equal)"""


@click.command()
@click.argument("name", type=click.Choice(SCENARIO_NAMES))
@click.option("--seed", type=int, default=None, help="the scenario's seed (default: its own)")
@click.option("--duration", type=float, default=None, help="seconds of traffic (scenarios that have it)")
@click.option("--workdir", type=click.Path(path_type=Path), default=None, help="keep broker/worker logs here")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="also write the figures as JSON")
def chaos(name: str, seed: int | None, duration: float | None, workdir: Path | None, json_path: Path | None) -> None:
    """Run one fault scenario (t1 worker kill, t2 broker restart, t4 hostile, t5 clicks, t6 redelivery),
    print its figure table; exit 1 if a check failed."""
    import asyncio
    import json
    from dataclasses import asdict

    from rich.console import Console

    from streams.harness.chaos import figure_table, run_scenario

    stop_children_on_signals()  # SIGTERM cancels the scenario; its finally stops broker and workers
    overrides = {"duration_s": duration} if duration else {}
    figures = asyncio.run(run_scenario(name, workdir=workdir, seed=seed, **overrides))
    Console().print(figure_table(figures))
    if json_path is not None:
        json_path.write_text(json.dumps({**asdict(figures), "ok": figures.ok}, indent=1, default=str))
    if not figures.ok:
        raise SystemExit(1)
