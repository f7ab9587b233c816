"""The query path's core is pure: importing any of its modules (fresh interpreter, transitively) loads no
Kafka client, no Faust, no event loop, no subprocess machinery and nothing of ``streams/``. What does I/O
lives in ``streams/`` (the Kafka clients, the embedded broker, the CLI) or is listed in ``IMPURE`` with
what it loads: ``settings`` (pydantic-settings imports asyncio) and two lifecycle tools off the query path
(``tracking`` runs git; ``drift_report`` draws its picture with a library that loads subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("faust", "aiokafka", "mode", "asyncio", "subprocess", "streams")
CORE = ("events", "decoding", "topics", "query.catalog", "query.rolling", "query.features", "query.scoring",
        "query.model_meta", "query.autobid", "query.auction", "query.pacing", "query.budget", "clicks.billing",
        "clicks.click_decisions", "labels.attribution", "labels.auction_log", "replica.state", "query.pipeline",
        "query.microbatch", "monitoring.drift", "monitoring.profile", "labels.calibration", "replica.history",
        "labels.purchase_decisions", "replica.fetch_pacing", "replica.aggregation", "replica.feature_copy")
IMPURE = {"settings": "asyncio", "lifecycle.drift_report": "subprocess", "lifecycle.tracking": "subprocess"}
"""modules of ``bidder/`` that load one of ``FORBIDDEN`` on import (one named each)"""


def _fresh_import(modules: list[str], watch: tuple[str, ...]) -> list[str]:
    """Which of ``watch`` a fresh interpreter has loaded after importing ``modules``."""
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(k for k in {watch!r} if k in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def _loaded(module: str) -> list[str]:
    return _fresh_import([f"bidder.{module}"], FORBIDDEN)


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_loads_no_io_machinery(module: str) -> None:
    assert _loaded(module) == []


def test_every_module_of_bidder_is_classified() -> None:
    modules = {".".join(p.relative_to(ROOT / "bidder").with_suffix("").parts) for p in (ROOT / "bidder").rglob("*.py")}
    modules = {m.removesuffix(".__init__") for m in modules} - {"__init__", "__main__"}
    unlisted = modules - set(CORE) - set(IMPURE)
    # what neither list names is checked here: a new module must be pure or say what it loads
    for m in sorted(unlisted):
        assert _loaded(m) == [], f"bidder.{m} loads I/O machinery: add it to IMPURE or make it pure"


@pytest.mark.parametrize(("module", "loads"), sorted(IMPURE.items()))
def test_the_impure_list_is_true(module: str, loads: str) -> None:
    # the list must not go stale either: a module made pure leaves it
    assert loads in _loaded(module)


HARNESS_USERS = {"streams.demo": "README command 1 drives the simulator"}
"""modules of ``streams/`` that load the harness (the simulated world, chaos, benchmarks) on import, with why;
the CLI loads it only inside the commands that use it"""


def _loads_harness(module: str) -> bool:
    return _fresh_import([module], ("streams.harness",)) == ["streams.harness"]


PRODUCT = sorted({".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in [*(ROOT / "streams").glob("*.py"), *(ROOT / "streams" / "cli").glob("*.py")]
                  if p.stem != "__main__"} - {"streams"})
"""the modules of ``streams/`` outside the harness, the CLI package's included"""


@pytest.mark.parametrize("module", PRODUCT)
def test_the_product_does_not_load_the_harness(module: str) -> None:
    # the Faust layer and the core serve without the simulated world, chaos or benchmarks; only the
    # commands that drive them (HARNESS_USERS) load it, and that list is checked both ways
    assert _loads_harness(module) == (module in HARNESS_USERS)


def test_no_core_module_loads_the_harness() -> None:
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "bidder").rglob("*.py")
                     if p.stem != "__main__")
    assert _fresh_import([m.removesuffix(".__init__") for m in modules], ("streams.harness",)) == []
