"""Experiment tracking: every training run and tuning trial, with its parameters, metrics, data and code.

Why not MLflow (the convention), measured here on 2026-11-27 with Python 3.11:

* ``pip install mlflow-skinny`` (3.17.2) took 37 s and brings ~30 packages (databricks-sdk,
  opentelemetry, fastapi, uvicorn, gitpython...) that nothing else here needs; ``import mlflow`` 2.5 s;
* its local file store (``file:./runs``) is in maintenance mode and *raises* unless the environment
  variable ``MLFLOW_ALLOW_FILE_STORE=true`` is set (only :mod:`bidder.settings` may touch the
  environment);
* its SQLite store runs Alembic migrations on a new store (~3-4 s per test) and MLflow's own code trips
  SQLAlchemy 2.1 deprecation warnings, which fail our ``filterwarnings = error``.

So runs are kept in a minimal JSON store with MLflow's vocabulary (experiment, run, params, metrics,
tags, artifacts), one directory per run, so a later export to MLflow is a loop over ``run.json`` files::

    runs/<experiment>/<run_id>/run.json      written atomically (temp file + os.replace) on every change
    runs/<experiment>/<run_id>/artifacts/    files the run produced (the exported models)

``run.json``: ``run_id, experiment, name, status (RUNNING|FINISHED|FAILED), start_time, end_time (UTC
ISO), params, metrics (flat ``{"test.ctr.auc": 0.77, ...}``), tags (``family``, ``kind``
= train|trial|online, ``parent`` for trials), dataset ({id, content_sha256}), code ({commit, dirty})``.

>>> import tempfile
>>> store = RunStore(Path(tempfile.mkdtemp()), clock=lambda: 0.0)
>>> run = store.start("demo", name="lr", params={"C": 1.0}, tags={"family": "lr"})
>>> run.log_metrics({"test.ctr.auc": 0.77}).end().status
'FINISHED'
>>> [r.metrics for r in store.runs("demo")]
[{'test.ctr.auc': 0.77}]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

__all__ = ["Run", "RunRecord", "RunStore", "code_version"]

DEFAULT_ROOT = Path("runs")


def code_version(repo: Path | None = None) -> dict[str, Any]:
    """``{"commit": <git HEAD or "unknown">, "dirty": <uncommitted changes?>}`` of ``repo``."""
    cwd = Path(repo) if repo is not None else Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as read back from ``run.json``."""

    run_id: str
    experiment: str
    name: str
    status: str
    start_time: str
    end_time: str | None
    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    dataset: dict[str, Any]
    code: dict[str, Any]
    path: Path

    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        d = json.loads((path / "run.json").read_text())
        return cls(run_id=str(d["run_id"]), experiment=str(d["experiment"]), name=str(d["name"]),
                   status=str(d["status"]), start_time=str(d["start_time"]), end_time=d.get("end_time"),
                   params=dict(d.get("params", {})), metrics={k: float(v) for k, v in d.get("metrics", {}).items()},
                   tags={k: str(v) for k, v in d.get("tags", {}).items()}, dataset=dict(d.get("dataset", {})),
                   code=dict(d.get("code", {})), path=path)


@dataclass
class Run:
    """An open run; every ``log_*`` rewrites ``run.json`` atomically."""

    path: Path
    data: dict[str, Any]
    clock: Callable[[], float] = field(repr=False)

    @property
    def run_id(self) -> str:
        return str(self.data["run_id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def artifacts(self) -> Path:
        p = self.path / "artifacts"
        p.mkdir(exist_ok=True)
        return p

    def _save(self) -> None:
        _write_json(self.path / "run.json", self.data)

    def log_params(self, params: Mapping[str, Any]) -> Self:
        self.data["params"].update({k: _plain(v) for k, v in params.items()})
        self._save()
        return self

    def log_metrics(self, metrics: Mapping[str, float]) -> Self:
        self.data["metrics"].update({k: float(v) for k, v in metrics.items()})
        self._save()
        return self

    def set_tags(self, tags: Mapping[str, str]) -> Self:
        self.data["tags"].update({k: str(v) for k, v in tags.items()})
        self._save()
        return self

    def log_artifact(self, src: Path, name: str | None = None) -> Path:
        dst = self.artifacts / (name or Path(src).name)
        shutil.copyfile(src, dst)
        return dst

    def end(self, status: str = "FINISHED") -> Self:
        self.data["status"] = status
        self.data["end_time"] = _iso(self.clock())
        self._save()
        return self


def _plain(v: Any) -> Any:
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


class RunStore:
    """Runs under ``root/<experiment>/<run_id>/``; see the module docstring."""

    def __init__(self, root: Path = DEFAULT_ROOT, *, clock: Callable[[], float],
                 code: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.clock = clock
        self.code = dict(code) if code is not None else {"commit": "unknown", "dirty": None}

    def start(self, experiment: str, *, name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None, dataset: Mapping[str, Any] | None = None) -> Run:
        """Open a new run (ids: UTC stamp + 8 hex of a hash of name, params and stamp; never reused)."""
        now = self.clock()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
        base = json.dumps([name, _plain(dict(params or {})), now], sort_keys=True)
        exp_dir = self.root / experiment
        exp_dir.mkdir(parents=True, exist_ok=True)
        for salt in range(10_000):
            run_id = f"{stamp}-{hashlib.sha256(f'{base}{salt}'.encode()).hexdigest()[:8]}"
            try:
                (exp_dir / run_id).mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 10k runs in one second
            raise RuntimeError("could not allocate a run id")
        run = Run(exp_dir / run_id, {
            "run_id": run_id, "experiment": experiment, "name": name, "status": "RUNNING",
            "start_time": _iso(now), "end_time": None, "params": {}, "metrics": {},
            "tags": {k: str(v) for k, v in (tags or {}).items()}, "dataset": dict(dataset or {}),
            "code": self.code,
        }, self.clock)
        return run.log_params(params or {})

    def runs(self, experiment: str | None = None) -> list[RunRecord]:
        """Every recorded run (of one experiment), oldest first."""
        exps = [self.root / experiment] if experiment else sorted(p for p in self.root.glob("*") if p.is_dir())
        out = [RunRecord.read(p) for e in exps if e.is_dir() for p in sorted(e.iterdir())
               if (p / "run.json").exists()]
        return sorted(out, key=lambda r: (r.start_time, r.run_id))

    def get(self, run_id: str) -> RunRecord:
        for p in self.root.glob(f"*/{run_id}"):
            if (p / "run.json").exists():
                return RunRecord.read(p)
        raise KeyError(f"no run {run_id!r} under {self.root}")
