"""One command-line framework: every ``bidder`` command is a click command whose ``--help`` lists its real
options, mutually exclusive options are refused with a usage error, and nothing parses with argparse."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from streams.cli import main
from streams.cli.options import one_of
from tests.cli_helpers import bidder

ROOT = Path(__file__).resolve().parents[1]


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


COMMANDS = dict(_commands(main))


def test_every_command_is_reached() -> None:
    names = {" ".join(path) for path in COMMANDS}
    assert {"bench kernel", "bench e2e", "chaos", "dataset freeze", "dataset list", "dataset verify", "drift report",
            "drift watch", "promote", "scoreboard", "shadow start", "shadow stop", "shadow status", "train",
            "train-models"} <= names


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_lists_every_option(path: tuple[str, ...]) -> None:
    command = COMMANDS[path]
    res = bidder(*path, "--help")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Usage: ")
    options = [p for p in command.params if isinstance(p, click.Option)]
    for option in options:
        assert max(option.opts, key=len) in res.stdout, (path, option.opts)
    for argument in (p for p in command.params if isinstance(p, click.Argument)):
        assert argument.make_metavar(click.Context(command)) in res.stdout
    if options:  # a command that takes options shows at least one real option beside --help
        assert any(o.opts != ["--help"] for o in options)


def test_commands_that_passed_options_through_now_declare_them() -> None:
    declared = {" ".join(path): {max(p.opts, key=len) for p in c.params if isinstance(p, click.Option)}
                for path, c in COMMANDS.items()}
    assert {"--queries-per-batch", "--calls", "--no-cuda-graphs", "--model-dir"} <= declared["bench kernel"]
    assert {"--snapshot", "--demo", "--kind", "--html"} <= declared["drift report"]
    assert {"--labels", "--topic", "--simulate", "--mature-after-s"} <= declared["dataset freeze"]
    assert {"--dataset", "--online", "--labels", "--as-of", "--models"} <= declared["scoreboard"]
    assert {"--force", "--reason", "--dataset", "--runs"} <= declared["promote"]
    assert {"--family", "--dataset", "--trials", "--small"} <= declared["train"]
    assert {"--family", "--seed", "--out", "--small"} <= declared["train-models"]
    assert {"--seed", "--duration", "--workdir", "--json"} <= declared["chaos"]
    assert {"--model-dir"} <= declared["shadow"] and {"--runs"} <= declared["shadow start"]


def test_no_module_imports_argparse() -> None:
    found = []
    for path in sorted(p for d in ("bidder", "streams", "onnx_models") for p in (ROOT / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "argparse"]
    assert found == []


def test_choices_named_in_the_cli_match_the_library() -> None:
    from bidder.lifecycle.dataset import DEFAULT_ROOT, SIMULATIONS
    from onnx_models.train import FAMILIES
    from streams.cli.chaos import SCENARIO_NAMES
    from streams.cli.lifecycle import DATASETS, TRAIN_FAMILIES
    from streams.harness.bench_kernel import DEFAULT_MODEL_DIR
    from streams.harness.chaos import SCENARIOS

    assert tuple(sorted(SCENARIOS)) == SCENARIO_NAMES
    assert TRAIN_FAMILIES == FAMILIES
    assert DATASETS == DEFAULT_ROOT
    freeze = COMMANDS[("dataset", "freeze")]
    assert tuple(next(p for p in freeze.params if p.name == "simulate").type.choices) == SIMULATIONS
    kernel = COMMANDS[("bench", "kernel")]
    assert next(p for p in kernel.params if p.name == "model_dir").default == DEFAULT_MODEL_DIR


@pytest.mark.parametrize(("argv", "message"), [
    (["dataset", "freeze", "--labels", "a.jsonl", "--simulate", "small"], "--labels and --simulate exclude each other"),
    (["dataset", "freeze"], "pass one of --labels | --topic | --simulate"),
    (["scoreboard", "--online", "--labels", "a.jsonl", "--topic", "labels"], "--topic and --labels exclude each other"),
    (["scoreboard", "--online"], "pass one of --topic | --labels"),
    (["scoreboard", "--online", "--labels", "a.jsonl", "--dataset", "x"], "are offline: not with --online"),
    (["scoreboard", "--labels", "a.jsonl", "--dataset", "x"], "--labels only with --online"),
    (["scoreboard"], "pass --dataset ID (or --online)"),
    (["promote", "some-run", "--force"], "--force needs --reason TEXT"),
    (["bench", "kernel", "--queries-per-batch", "1,x"], "expected comma-separated integers"),
    (["bench", "kernel", "--queries-per-batch", "0,8"], "expected positive integers"),
    (["chaos", "t9"], "'t9' is not one of"),
])
def test_usage_errors_exit_2_and_say_why(argv: list[str], message: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written; a stray write lands here
    res = bidder(*argv)
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_one_of_returns_the_option_given() -> None:
    assert one_of({"a": None, "b": "x"}, "a", "b") == "b"
    assert one_of({"a": None, "b": False}, "a", "b", required=False) is None


def test_shadow_status_without_a_shadow_exits_1(tmp_path: Path) -> None:
    res = bidder("shadow", "--model-dir", tmp_path, "status")
    assert res.exit_code == 1 and res.stdout == "no shadow\n"
    stopped = bidder("shadow", "--model-dir", tmp_path, "stop")
    assert stopped.exit_code == 0 and stopped.stdout == "no shadow was set\n"


def test_dataset_list_reads_the_manifest(tmp_path: Path) -> None:
    from bidder.lifecycle.dataset import freeze, records_from_traffic
    from onnx_models.traffic import SimConfig, simulate

    frozen = freeze(records_from_traffic(simulate(SimConfig.small(), seed=3)), root=tmp_path, mature_after_s=0.0,
                    clock=lambda: 0.0)
    res = bidder("dataset", "list", "--root", tmp_path)
    assert res.exit_code == 0 and res.stdout.startswith(f"{frozen.id}  train={frozen.entry['rows']['train']} ")


@pytest.mark.parametrize(("module", "usage"), [
    ("bidder", "Usage: python -m bidder [OPTIONS] COMMAND"),
    ("streams.cli", "Usage: python -m streams.cli [OPTIONS] COMMAND"),
    ("onnx_models.train", "Usage: python -m onnx_models.train [OPTIONS]"),
    ("streams.harness.chaos", "Usage: python -m streams.harness.chaos [OPTIONS]"),
    ("streams.harness.bench_kernel", "Usage: python -m streams.harness.bench_kernel [OPTIONS]"),
])
def test_python_dash_m_forms_are_the_same_commands(module: str, usage: str) -> None:
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(usage)
    assert "--seed" in proc.stdout or "Commands:" in proc.stdout
