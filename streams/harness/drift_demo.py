"""The offline injected-drift demo behind ``bidder drift report --demo``: a seeded world served offline, a
reference fitted on its first queries, a monitor watching stationary traffic and then an injected drift."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bidder.monitoring.drift import DriftEvent, DriftMonitor, DriftSettings
from bidder.monitoring.profile import FeatureProfile, profile_matrix
from bidder.query.features import FEATURE_SPEC
from streams.harness.drift_inject import DriftInjection, InjectionKind, offline_stream, proxy_predictions
from streams.harness.market import World, WorldConfig

__all__ = ["DemoResult", "run_demo"]

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What an offline injected-drift run produced."""

    monitor: DriftMonitor
    events: tuple[tuple[int, DriftEvent], ...]
    """(queries since the injection started, event); negative before it"""
    injection: DriftInjection | None


def run_demo(
    *,
    injection_feature: str | None = "relevance",
    kind: InjectionKind = "scale",
    amount: float = 10.0,
    seed: int = 7,
    reference_queries: int = 2000,
    stationary_queries: int = 2000,
    queries_after: int = 600,
    n_candidates: int = 100,
    settings: DriftSettings | None = None,
) -> DemoResult:
    """A seeded world served offline: the first ``reference_queries`` fit the reference profiles, the
    monitor then sees ``stationary_queries`` of the same traffic and ``queries_after`` queries with the
    injection (none when ``injection_feature`` is None)."""
    world = World.generate(WorldConfig(n_shops=60, n_listings=3000, n_users=3000), seed=seed)
    start = 1_699_999_200.0
    dt = 0.25
    inject_at = reference_queries + stationary_queries
    total = inject_at + queries_after

    def stream(inj: DriftInjection | None, std: float | None, n: int) -> Any:
        return offline_stream(
            world, n_queries=n, rng=np.random.default_rng(seed + 1), injection=inj, std=std,
            start_ts=start, dt_s=dt, n_candidates=n_candidates,
        )  # fmt: skip

    # the reference part is identical with or without the injection (same seed, before start_ts), so
    # one pass serves both; only a shift needs the reference std before the stream starts
    def fit(n: int) -> tuple[tuple[FeatureProfile, ...], tuple[FeatureProfile, ...]]:
        x_ref = np.concatenate(ref_rows[:n])
        preds = proxy_predictions(x_ref)
        return (
            profile_matrix(x_ref, FEATURE_SPEC.names),
            tuple(FeatureProfile.from_values(k, v) for k, v in preds.items()),
        )

    injection = None
    std = None
    ref_rows: list[F32] = []
    if injection_feature is not None:
        injection = DriftInjection(injection_feature, kind, amount, start_ts=start + inject_at * dt)
        if kind == "shift":
            ref_rows = [s.x for s in stream(None, None, reference_queries)]
            std = fit(reference_queries)[0][FEATURE_SPEC.index(injection_feature)].std
    monitor: DriftMonitor | None = None
    events: list[tuple[int, DriftEvent]] = []
    for i, served in enumerate(stream(injection, std, total)):
        if i < reference_queries:
            if len(ref_rows) < reference_queries:
                ref_rows.append(served.x)
            continue
        if monitor is None:
            refs, pred_refs = fit(reference_queries)
            monitor = DriftMonitor(
                refs,
                pred_refs,
                settings=settings or DriftSettings(sample_rate=0.05),
                rng=np.random.default_rng(seed + 2),
                model_version=f"demo-seed{seed}",
            )
        for ev in monitor.update(served.x, served.preds, now=served.ts):
            events.append((i - inject_at, ev))
    if monitor is None:
        raise ValueError("the demo needs at least one query after the reference part")
    return DemoResult(monitor=monitor, events=tuple(events), injection=injection)
