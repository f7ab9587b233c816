"""What a worker answers about itself: liveness (``/healthz``), readiness (``/readyz``), whether its rolling
features are still warming up, and the Prometheus page (``/metrics``)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from bidder.replica.state import BidderState
from bidder.settings import Settings
from streams.metrics import WorkerMetrics
from streams.replicator import Replicator
from streams.serving import Serving

__all__ = ["Probes", "add_probe_pages"]


@dataclass
class Probes:
    """The health of one worker process, from its replica, its models and its counters."""

    settings: Settings
    state: BidderState
    replica: Replicator
    serving: Serving | None = None
    counts: Counter[str] = field(default_factory=Counter)
    """the worker's counters (``group_past_end``, ``commit_stalled`` and the skipped records are read here)"""
    clock: Callable[[], float] = time.time
    warmed: bool = False
    """start-up work done (replica recovered, catalog checked, hot path warmed): part of readiness"""

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: the event loop answers (this runs on it), the replica consumer is not stuck and no
        group partition stayed past its log's end after a reset (the ``consumer_lag`` timer resets a
        truncated partition to its beginning; ``group_past_end`` counts partitions that did not
        recover, and the timer exits the process right after failing this)."""
        age = self.replica.seconds_since_round()
        stuck = self.counts["group_past_end"] + self.counts["commit_stalled"]
        ok = age < 30.0 and not stuck
        return ok, {"event_loop": "responsive", "replica_round_age_s": round(age, 3),
                    "replica_truncations": self.replica.truncations,
                    "group_truncations": self.counts["group_truncations"], "group_past_end": stuck,
                    "skipped_records": {c: {o: self.counts[f"{c}_skipped_{o}"] for o in ("repaired", "absent")}
                                        for c in ("group", "replica")}}

    def warming(self, now: float) -> str | None:
        """Why the rolling features are not warm yet (their history shorter than ``warm_history_s``), or
        None. A worker serves while warming: a new deployment's features really are colder than the
        training data's, and the drift episodes that open meanwhile are marked ``warm_up``."""
        need = self.settings.warm_history_s
        span = now - self.state.history_from
        if need <= 0 or span >= need:
            return None
        if self.state.history_from == float("inf"):
            return f"no auction history yet (features are warm after {need:.0f} s of it)"
        return f"rolling features span {max(span, 0.0):.0f} s of auction history of the {need:.0f} s they need"

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: models loaded on the requested provider, broker reachable, replica recovered."""
        assert self.serving is not None
        models = self.serving.champion
        providers = {k: m.providers[0] for k, m in (("ctr", models.ctr), ("cvr", models.cvr))}
        want = "CUDAExecutionProvider" if self.settings.provider == "cuda" else "CPUExecutionProvider"
        checks = {
            "models": all(p == want for p in providers.values()),
            "broker": self.replica.seconds_since_round() < 10.0,
            "recovered": self.replica.ready.is_set(),
            "warmed": self.warmed,
        }
        consistent = self.serving.check()
        checks["models_consistent"] = all(consistent.values())
        return all(checks.values()), {**checks, "warming": self.warming(self.clock()),
                                      "providers": providers, "model_versions": models.versions,
                                      "serving": consistent,
                                      "replica_lag": self.replica.lag()}



def add_probe_pages(app: faust.App, probes: Probes, worker_metrics: WorkerMetrics) -> None:
    """``/healthz`` and ``/readyz`` (503 when failing, with the reasons) and ``/metrics`` on the app's web server."""

    @app.page("/healthz")
    async def healthz(view: Any, request: Any) -> Any:
        ok, body = probes.health()
        return view.json(body, status=200 if ok else 503)

    @app.page("/readyz")
    async def readyz(view: Any, request: Any) -> Any:
        ok, body = probes.readiness()
        return view.json(body, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(view: Any, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return view.bytes(generate_latest(worker_metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])
