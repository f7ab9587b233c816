"""Hot swap: a running worker picks up a promoted model without stopping.

``bidder promote`` (``bidder/lifecycle/promotion.py``) commits a release by replacing ``<model_dir>/CHAMPION``
atomically; the release directory it points to is complete and immutable. This watcher polls that
pointer; when the release changes it loads the new CTR and CVR models in a thread (every load-time
check of ``bidder.query.scoring``: sha256, feature spec, inputs/outputs, golden outputs) and checks that they
give finite probabilities on the golden rows. Only then does it swap them into the pipeline, between
two batches (one assignment on the event loop: a query is priced by the old pair or the new pair, never
a mix). A truncated, corrupt, spec-mismatched or NaN-producing release is refused with its reason and
the old models keep serving; the same bad pointer is not retried until it changes.

It polls ``SHADOW`` (``bidder/query/shadow.py``) the same way: a new pointer loads the shadow pair with the
same checks and starts shadow scoring; a removed pointer stops it; a bad shadow is refused and never
affects serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bidder.query.model_meta import ModelSpecError
from bidder.query.scoring import Models, ProviderError, load_models
from bidder.query.shadow import SHADOW, read_pointer
from bidder.settings import Settings

__all__ = ["ModelWatcher", "champion_dir", "check_finite"]

log = logging.getLogger(__name__)


def champion_dir(model_dir: Path) -> tuple[Path, str | None, str | None]:
    """Where the serving models are: the CHAMPION release if there is one, else ``model_dir`` itself.
    Returns (directory, family from the pointer or None, release or None)."""
    pointer = model_dir / "CHAMPION"
    try:
        info = orjson.loads(pointer.read_bytes())
        return model_dir / str(info["path"]), str(info["family"]), str(info["release"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return model_dir, None, None


def check_finite(models: Models) -> None:
    """Both models must return probabilities in [0, 1] on their golden rows (or a probe row)."""
    for scorer in (models.ctr, models.cvr):
        meta = scorer.meta
        x = meta.golden_matrix() if meta.golden_inputs else np.zeros((4, len(meta.feature_spec.names)), np.float32)
        p = scorer.score(np.ascontiguousarray(x, np.float32))
        if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
            raise ModelSpecError(f"model {meta.version} returns non-probabilities on its golden rows "
                                 f"(min {np.nanmin(p) if np.isfinite(p).any() else 'nan'}, "
                                 f"NaN {int(np.isnan(p).sum())})")


class ModelWatcher:
    """Polls ``CHAMPION`` and swaps models into a runtime (``streams.runtime.Runtime``)."""

    def __init__(self, runtime: Any, settings: Settings, *, interval_s: float = 1.0) -> None:
        self._rt = runtime
        self._settings = settings
        self.interval_s = interval_s
        self._seen: bytes | None = self._pointer()
        self._shadow_seen: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self.swaps = 0
        self.refusals: list[str] = []

    def _pointer(self, name: str = "CHAMPION") -> bytes | None:
        try:
            return (self._settings.model_dir / name).read_bytes()
        except OSError:
            return None

    async def start(self) -> None:
        await self.check_shadow()  # a shadow named at start-up scores from the first batch
        self._task = asyncio.create_task(self._run(), name="model-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()
            await self.check_shadow()

    async def check_shadow(self) -> bool:
        """Start, change or stop the shadow when ``SHADOW`` changed; True when the shadow changed."""
        raw = self._pointer(SHADOW)
        if raw == self._shadow_seen:
            return False
        self._shadow_seen = raw
        s = self._settings
        found = read_pointer(s.model_dir) if raw is not None else None
        if found is None:
            if raw is not None:
                self._refuse("shadow", f"unreadable {SHADOW} pointer {raw[:80]!r}")
            if self._rt.shadow is not None:
                log.warning("shadow scoring stopped")
            self._rt.set_shadow(None)
            return True
        try:
            models = await asyncio.to_thread(load_models, found.directory, found.family, s.provider,
                                             s.intra_op_threads, s.inter_op_threads)
            await asyncio.to_thread(check_finite, models)
        except (ModelSpecError, ProviderError, OSError, ValueError, RuntimeError) as exc:
            self._refuse("shadow", f"shadow release {found.release}: {exc}")
            return False
        self._rt.set_shadow(models)
        log.warning("shadow scoring with %s (release %s)", models.versions, found.release)
        return True

    def _refuse(self, result: str, reason: str) -> None:
        self.refusals.append(reason)
        self._rt.metrics.model_swaps.labels(result=f"{result}_refused").inc()
        log.error("%s refused, serving unchanged: %s", result, reason)

    async def check(self) -> bool:
        """Swap if the pointer changed and the new release loads; True when a swap happened."""
        raw = self._pointer()
        if raw is None or raw == self._seen:
            return False
        self._seen = raw
        s = self._settings
        directory, family, release = champion_dir(s.model_dir)
        try:
            models = await asyncio.to_thread(load_models, directory, family or s.model_family, s.provider,
                                             s.intra_op_threads, s.inter_op_threads)
            await asyncio.to_thread(check_finite, models)
        except (ModelSpecError, ProviderError, OSError, ValueError, RuntimeError) as exc:
            reason = f"release {release}: {exc}"
            self.refusals.append(reason)
            self._rt.metrics.model_swaps.labels(result="refused").inc()
            log.error("model swap refused, previous models keep serving: %s", reason)
            return False
        self._rt.swap_models(models)
        self.swaps += 1
        self._rt.metrics.model_swaps.labels(result="swapped").inc()
        log.warning("model swap: now serving %s (release %s)", models.versions, release)
        return True
