"""The models serving now, and every place that scores with them, replaced in one step.

A worker scores with its champion in several places: the pipeline's CTR and CVR sessions (and the
versions it stamps on every outcome), the micro-batcher's primary scorers (when micro-batching is on,
they, not the pipeline's sessions, price the queries), the fallback the micro-batcher sheds to, the
shadow challenger scoring the winners beside them, and the drift monitor, whose reference profiles
belong to the champion; ``bidder_model_info`` on ``/metrics`` says which versions serve. A swap that
missed one of them would price with one model and report another: the silent failure the promotion
gate exists to prevent.

:class:`Serving` owns all of them. :meth:`Serving.swap` and :meth:`Serving.set_shadow` are synchronous
and run on the event loop, so they happen between two batches: a batch is scored, priced and stamped
by one set of models. :meth:`Serving.check` says whether every place agrees (``/readyz`` reports it).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from bidder.monitoring.drift import DriftMonitor, DriftSettings
from bidder.monitoring.profile import FeatureProfile
from bidder.query.microbatch import MicroBatcher
from bidder.query.pipeline import BidPipeline
from bidder.query.scoring import Models
from bidder.settings import Settings

__all__ = ["Serving", "drift_monitor"]

log = logging.getLogger(__name__)


def drift_monitor(settings: Settings, models: Models, *, rng: np.random.Generator) -> DriftMonitor | None:
    """The monitor over served features (the CTR model's reference) and both models' outputs."""
    if not settings.drift_enabled:
        return None
    ctr, cvr = models.metas["ctr"], models.metas["cvr"]
    if not ctr.reference:
        log.warning("model %s has no reference profile: feature drift is not monitored", ctr.version)
        return None
    preds = tuple(replace(FeatureProfile.from_dict(m.prediction_reference), name=name)
                  for name, m in (("pctr", ctr), ("pcvr", cvr)) if m.prediction_reference)
    return DriftMonitor(
        tuple(FeatureProfile.from_dict(r) for r in ctr.reference), preds,
        settings=DriftSettings(
            sample_rate=settings.drift_sample_rate, window=settings.drift_window,
            min_count=min(settings.drift_min_count, settings.drift_window),
            # judge a fifth of a window of new rows at a time: each evaluation sorts the whole window
            eval_every=max(50, settings.drift_window // 5),
            psi_threshold=settings.drift_psi_threshold, js_threshold=settings.drift_js_threshold,
            scale_factor=settings.drift_scale_factor, mean_threshold=settings.drift_mean_threshold,
            missing_threshold=settings.drift_missing_threshold),
        rng=rng, model_version=f"{ctr.version}/{cvr.version}")


class Serving:
    """The champion, its fallback and shadow, and the pipeline, micro-batcher and drift monitor that
    use them; see the module docstring."""

    def __init__(
        self,
        *,
        settings: Settings,
        pipeline: BidPipeline,
        champion: Models,
        batcher: MicroBatcher | None = None,
        fallback: Models | None = None,
        shadow: Models | None = None,
        model_info: Any = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.batcher = batcher
        self.fallback = fallback
        self.shadow = shadow
        self.model_info = model_info
        """a prometheus ``Info`` (``bidder_model_info``), or None"""
        self._rng = rng if rng is not None else np.random.default_rng()
        self.champion = champion
        self.drift: DriftMonitor | None = None
        self.swaps = -1
        self.swap(champion)  # the first install: every place from one call, as later swaps do

    def swap(self, champion: Models) -> None:
        """Serve ``champion`` from the next batch on, everywhere at once."""
        drift = drift_monitor(self.settings, champion, rng=self._rng)  # built first: nothing half-swapped
        if self.batcher is not None:
            self.batcher.replace_primary([champion.ctr, champion.cvr])
        self.pipeline.ctr, self.pipeline.cvr = champion.ctr, champion.cvr
        self.pipeline.model_versions = dict(champion.versions)
        self.champion = champion
        self.drift = drift
        self.swaps += 1
        self.publish()

    def set_shadow(self, shadow: Models | None) -> None:
        """Start (or stop, with None) shadow scoring from the next batch on."""
        self.shadow = shadow
        self.publish()

    def publish(self) -> None:
        """``bidder_model_info``: serving versions, family and provider, and the shadow's versions."""
        if self.model_info is None:
            return
        shadow = self.shadow.versions if self.shadow is not None else {}
        self.model_info.info({**{f"{k}_version": v for k, v in self.champion.versions.items()},
                              **{f"shadow_{k}_version": v for k, v in shadow.items()},
                              "provider": self.settings.provider, "family": self.champion.ctr.meta.family})

    def check(self) -> dict[str, bool]:
        """Whether each place scores with (and reports) the champion."""
        c = self.champion
        out = {
            "pipeline": self.pipeline.ctr is c.ctr and self.pipeline.cvr is c.cvr,
            "versions": self.pipeline.model_versions == dict(c.versions),
        }
        if self.batcher is not None:
            out["micro_batcher"] = [id(s) for s in self.batcher.primary] == [id(c.ctr), id(c.cvr)]
        if self.drift is not None:
            ctr, cvr = c.metas["ctr"], c.metas["cvr"]
            out["drift_reference"] = self.drift.model_version == f"{ctr.version}/{cvr.version}"
        return out
