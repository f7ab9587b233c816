"""The model lifecycle: frozen datasets, training, the scoreboard, promotion and shadow scoring.

Each command is a shell over :mod:`bidder.lifecycle` (datasets, scoreboard, promotion), :mod:`bidder.query.shadow`
and :mod:`onnx_models` (training), all loaded inside the command that uses them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from bidder.settings import Settings
from streams.cli.options import one_of, only_with

__all__ = ["TRAIN_FAMILIES", "dataset", "promote", "scoreboard", "shadow", "train", "train_models"]

DATASETS = Path("datasets")
"""``bidder.lifecycle.dataset.DEFAULT_ROOT``"""
RUNS = Path("runs")
TRAIN_FAMILIES = ("lr", "gbdt", "mlp")
"""``onnx_models.train.FAMILIES``, named here so ``--help`` loads no training code (a test keeps them equal)"""
_datasets_root = click.option("--datasets-root", type=click.Path(path_type=Path), default=DATASETS,
                              show_default=True)
_runs = click.option("--runs", type=click.Path(path_type=Path), default=RUNS, show_default=True,
                     help="tracked runs")
_model_dir = click.option("--model-dir", type=click.Path(path_type=Path), default=None,
                          help="serving dir (default BIDDER_MODEL_DIR)")


def wall_clock() -> float:
    return datetime.now(UTC).timestamp()


@click.group()
def dataset() -> None:
    """Frozen, content-hashed datasets from matured labels: freeze | list | verify ID."""


@dataset.command("freeze")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="JSONL dump of the label topics (impressions and updates)")
@click.option("--topic", multiple=True, metavar="NAME",
              help="read this topic from the beginning (BIDDER_KAFKA_BOOTSTRAP; repeatable: the online labels are "
                   "--topic impressions --topic labels)")
@click.option("--simulate", type=click.Choice(["small", "medium", "full"]), default=None,
              help="offline simulator traffic (onnx_models.traffic), with the oracle")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--root", type=click.Path(path_type=Path), default=DATASETS, show_default=True)
@click.option("--train-frac", type=float, default=0.8, show_default=True)
@click.option("--train-hours", type=float, default=None)
@click.option("--test-hours", type=float, default=None)
@click.option("--mature-after-s", type=float, default=None,
              help="default: click_window_s + attribution_window_s from the settings")
@click.pass_context
def dataset_freeze(ctx: click.Context, labels: Path | None, topic: tuple[str, ...], simulate: str | None, seed: int,
                   root: Path, train_frac: float, train_hours: float | None, test_hours: float | None,
                   mature_after_s: float | None) -> None:
    """Fold matured labels into a frozen dataset; one source: --labels FILE | --topic NAME... | --simulate SIZE."""
    from bidder.lifecycle import dataset as ds

    settings: Settings = ctx.obj
    one_of(ctx.params, "labels", "topic", "simulate")
    mature = settings.click_window_s + settings.attribution_window_s if mature_after_s is None else mature_after_s
    if labels is not None:
        source = ds.jsonl_source(labels)
    elif topic:
        if not settings.kafka_bootstrap:
            raise click.UsageError("--topic needs BIDDER_KAFKA_BOOTSTRAP")
        try:
            source = ds.topic_source(settings.kafka_bootstrap, settings=settings, topics=topic)
        except ds.MissingExamplesError as err:
            raise click.UsageError(str(err)) from err
    else:
        source = ds.simulator_source(str(simulate), seed=seed)
        mature = 0.0 if mature_after_s is None else mature_after_s  # offline labels are final
    frozen = ds.freeze(source[0], root=root, mature_after_s=mature, clock=wall_clock, train_frac=train_frac,
                       train_s=None if train_hours is None else train_hours * 3600.0,
                       test_s=None if test_hours is None else test_hours * 3600.0, source=source[1])
    e = frozen.entry
    click.echo(json.dumps({"id": frozen.id, "rows": e["rows"], "window": e["window"], "maturity": e["maturity"],
                           "source": e["source"]}, indent=1))


@dataset.command("list")
@click.option("--root", type=click.Path(path_type=Path), default=DATASETS, show_default=True)
def dataset_list(root: Path) -> None:
    """The manifest's datasets."""
    from bidder.lifecycle.dataset import read_manifest

    for ds_id, e in read_manifest(root)["datasets"].items():
        click.echo(f"{ds_id}  train={e['rows']['train']} test={e['rows']['test']}  "
                   f"{e['window']['train_start_utc']} .. {e['window']['test_end_utc']}  {e['source'].get('kind')}")


@dataset.command("verify")
@click.argument("id")
@click.option("--root", type=click.Path(path_type=Path), default=DATASETS, show_default=True)
def dataset_verify(id: str, root: Path) -> None:
    """Check a frozen dataset's files; exit 1 if one changed since it was frozen."""
    from bidder.lifecycle.dataset import DatasetCorruptError, load

    try:
        load(id, root=root)
    except DatasetCorruptError as e:
        click.echo(f"CORRUPT: {e}", err=True)
        raise SystemExit(1) from None
    click.echo(f"{id}: ok")


@click.command()
@click.option("--family", type=click.Choice(TRAIN_FAMILIES), required=True)
@click.option("--dataset", "dataset_id", required=True, help="frozen dataset id")
@click.option("--trials", type=int, default=0, show_default=True, help="Optuna TPE trials per target (0: defaults)")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--small", is_flag=True, help="small networks/ensembles (smoke runs)")
@_datasets_root
@_runs
def train(family: str, dataset_id: str, trials: int, seed: int, small: bool, datasets_root: Path,
          runs: Path) -> None:
    """Train CTR+CVR of a family on a frozen dataset, record the run, optional --trials N (Optuna TPE)."""
    from onnx_models.lifecycle import train_dataset
    from onnx_models.train import TrainConfig

    run_id, out, metrics = train_dataset(family, dataset_id, trials=trials, seed=seed,
                                         cfg=TrainConfig.small() if small else TrainConfig(),
                                         datasets_root=datasets_root, runs_root=runs, clock=wall_clock)
    click.echo(json.dumps({"run_id": run_id, "models": str(out), "metrics": metrics}, indent=1))
    click.echo(f"promote with: bidder promote {out}", err=True)


@click.command("train-models")
@click.option("--family", type=click.Choice([*TRAIN_FAMILIES, "all"]), default="all", show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="default: onnx_models/ (the committed models)")
@click.option("--small", is_flag=True, help="tiny world and log (smoke test)")
def train_models(family: str, seed: int, out: Path | None, small: bool) -> None:
    """Train the default CTR and CVR models of every family on simulated traffic and export them to ONNX
    (``python -m onnx_models.train`` is this command)."""
    import time

    from onnx_models.train import FAMILIES, MODEL_DIR, TrainConfig, run

    t0 = time.perf_counter()
    results = run(FAMILIES if family == "all" else (family,), seed=seed,
                  cfg=TrainConfig.small() if small else TrainConfig(), out_dir=out or MODEL_DIR)
    click.echo(f"{'model':13s} {'auc':>8s} {'oracle':>8s} {'logloss':>8s} {'oracle':>8s} {'n_train':>9s}  version")
    for name, (meta, _) in results.items():
        m: dict[str, Any] = meta.metrics
        click.echo(f"{name:13s} {m['test']['auc']:8.4f} {m['oracle_test']['auc']:8.4f} {m['test']['logloss']:8.4f} "
                   f"{m['oracle_test']['logloss']:8.4f} {meta.training['n_train']:9d}  {meta.version}")
    click.echo(f"done in {time.perf_counter() - t0:.1f} s", err=True)


@click.command(epilog="--online (--topic impressions --topic labels | --labels FILE): serving and shadow model "
                      "versions on live labels instead of a frozen dataset's runs.")
@click.option("--dataset", "dataset_id", default=None, help="frozen dataset id (offline; required without --online)")
@_datasets_root
@_runs
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="write the scoreboard plot here (default: scoreboard.png offline, none online)")
@click.option("--trials", is_flag=True, help="also list tuning trials (validation metrics)")
@click.option("--models", multiple=True, metavar="DIR[:FAMILY]",
              help="also score this ONNX pair on the test set, e.g. onnx_models:mlp (repeatable)")
@click.option("--served", is_flag=True, help="also score the predictions the test rows were served with")
@click.option("--online", is_flag=True, help="online metrics per model version (serving and shadow) from labels")
@click.option("--topic", multiple=True, metavar="NAME",
              help="online: read this topic from the beginning (BIDDER_KAFKA_BOOTSTRAP; repeatable: the online labels "
                   "are --topic impressions --topic labels)")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="online: JSONL dump of the label topics (impressions and updates)")
@click.option("--mature-after-s", type=float, default=None,
              help="online: judge impressions at least this old (default: click window + attribution window)")
@click.option("--as-of", type=float, default=None, help="online: event time of 'now' (default: the wall clock)")
@click.pass_context
def scoreboard(ctx: click.Context, dataset_id: str | None, datasets_root: Path, runs: Path, plot_path: Path | None,
               trials: bool, models: tuple[str, ...], served: bool, online: bool, topic: tuple[str, ...],
               labels: Path | None, mature_after_s: float | None, as_of: float | None) -> None:
    """Every recorded run on a frozen test set, side by side, with the oracle; table and plot. With --online,
    the serving and shadow model versions on live labels; exit 1 when no impression matured yet."""
    if online:
        if dataset_id or trials or models or served:
            raise click.UsageError("--dataset, --trials, --models and --served are offline: not with --online")
        _online_board(ctx.obj, topics=topic, labels=labels, mature_after_s=mature_after_s, as_of=as_of,
                      plot_path=plot_path)
        return
    only_with(ctx.params, "online", "topic", "labels", "mature_after_s", "as_of")
    if dataset_id is None:
        raise click.UsageError("pass --dataset ID (or --online)")
    from bidder.lifecycle import dataset as ds
    from bidder.lifecycle import scoreboard as sb
    from bidder.lifecycle.tracking import RunStore

    data = ds.load(dataset_id, root=datasets_root)
    rows = sb.build(data, RunStore(runs, clock=wall_clock).runs(), include_trials=trials)
    for spec in models:
        path, _, fam = spec.rpartition(":") if ":" in spec else (spec, "", "")
        rows += sb.model_rows(data, Path(path), fam or None)
    if served:
        rows += sb.served_rows(data)
    title = sb.dataset_title(data)
    click.echo(sb.render(rows, title=title))
    click.echo(f"plot: {sb.plot(rows, plot_path or Path('scoreboard.png'), title=title)}")


def _online_board(settings: Settings, *, topics: tuple[str, ...], labels: Path | None, mature_after_s: float | None,
                  as_of: float | None, plot_path: Path | None) -> None:
    from bidder.lifecycle import dataset as ds
    from bidder.lifecycle.online_board import board_title, fold_online, online_rows
    from bidder.lifecycle.scoreboard import plot, render

    one_of({"topic": topics, "labels": labels}, "topic", "labels")
    records: Iterable[Mapping[str, Any]]
    if labels is not None:
        records = ds.read_jsonl(labels)
    elif not settings.kafka_bootstrap:
        raise click.UsageError("--topic needs BIDDER_KAFKA_BOOTSTRAP")
    else:
        try:
            records = ds.topic_source(settings.kafka_bootstrap, settings=settings, topics=topics)[0]
        except ds.MissingExamplesError as err:
            raise click.UsageError(str(err)) from err
    mature = settings.click_window_s + settings.attribution_window_s if mature_after_s is None else mature_after_s
    fold = fold_online(records, as_of=wall_clock() if as_of is None else as_of, mature_after_s=mature)
    rows, title = online_rows(fold), board_title(fold)
    click.echo(render(rows, title=title))
    if plot_path is not None and rows:
        click.echo(f"plot: {plot(rows, plot_path, title=title)}")
    if not rows:
        raise SystemExit(1)


@click.command()
@click.argument("model")
@click.option("--force", is_flag=True, help="promote even if a check fails (needs --reason; recorded)")
@click.option("--reason", default="", help="why --force was needed")
@_model_dir
@click.option("--dataset", "dataset_id", default=None, help="frozen dataset for the replay (default: the challenger's)")
@_datasets_root
@_runs
@click.pass_obj
def promote(settings: Settings, model: str, force: bool, reason: str, model_dir: Path | None, dataset_id: str | None,
            datasets_root: Path, runs: Path) -> None:
    """Gate a challenger against the serving champion; promote atomically or refuse with a report (exit 1).
    MODEL is a directory with <family>_{ctr,cvr}.{onnx,json}, or a run id under --runs."""
    from bidder.lifecycle import dataset as ds
    from bidder.lifecycle.promotion import model_source, promote, trained_on

    if force and not reason.strip():
        raise click.UsageError("--force needs --reason TEXT")
    src = model_source(model, runs)
    dataset_id = dataset_id or trained_on(src)
    if not dataset_id:
        raise click.UsageError("the challenger names no dataset: pass --dataset ID")
    data = ds.load(dataset_id, root=datasets_root)
    report = promote(src, model_dir=model_dir or settings.model_dir, test=data.test, dataset_id=data.id,
                     clock=wall_clock, force=force, reason=reason, champion_family=settings.model_family)
    click.echo(report.render())
    if report.decision == "refused":
        click.echo("refused: pass --force --reason TEXT to override (recorded)", err=True)
        raise SystemExit(1)


@click.group()
@_model_dir
@click.pass_context
def shadow(ctx: click.Context, model_dir: Path | None) -> None:
    """Score live traffic with a challenger beside the champion: start MODEL | stop | status."""
    settings: Settings = ctx.obj
    ctx.obj = model_dir or settings.model_dir


@shadow.command("start")
@click.argument("model")
@_runs
@click.pass_obj
def shadow_start(model_dir: Path, model: str, runs: Path) -> None:
    """Shadow a challenger (a model directory or a run id under --runs)."""
    from bidder.lifecycle.promotion import model_source
    from bidder.query.shadow import start

    pointer = start(model_source(model, runs), model_dir=model_dir, clock=wall_clock, source=model)
    click.echo(json.dumps(pointer, indent=1))


@shadow.command("stop")
@click.pass_obj
def shadow_stop(model_dir: Path) -> None:
    """Stop shadowing."""
    from bidder.query.shadow import stop

    click.echo("shadow stopped" if stop(model_dir) else "no shadow was set")


@shadow.command("status")
@click.pass_obj
def shadow_status(model_dir: Path) -> None:
    """Print the SHADOW pointer; exit 1 if there is none."""
    from bidder.query.shadow import read_pointer

    found = read_pointer(model_dir)
    if found is None:
        click.echo("no shadow")
        raise SystemExit(1)
    click.echo(json.dumps({"release": found.release, "family": found.family, "versions": found.versions}, indent=1))
