"""Shadow scoring: a challenger scores what the champion served, without pricing anything.

Files (beside the champion's, in ``BIDDER_MODEL_DIR``)::

    <model_dir>/shadow/<release>/<family>_{ctr,cvr}.{onnx,json}   complete before the pointer names it
    <model_dir>/SHADOW                                            JSON pointer: release, family, path,
                                                                  versions, started_at, source

``bidder shadow start MODEL`` (a directory or a run id) loads the pair (every load-time check of
:func:`bidder.query.scoring.load_models`), copies it into its release directory and replaces the pointer
atomically; ``bidder shadow stop`` removes the pointer. Running workers poll it
(``streams/model_watch.py``) and start or stop shadowing between two batches.

In the worker, once a batch's auctions are decided, the shadow pair scores the winners' feature vectors
exactly as served (one call per model for the whole batch) and each outcome carries
``shadow = {"versions": {...}, "pctr": [...], "pcvr": [...]}`` aligned with its winners
(:func:`shadow_outcomes`). Bids, ranking and prices are the champion's alone: the shadow runs after
them. The labels record copies the shadow predictions per impression, so the shadow is judged on the
same impressions and labels as the champion: calibration per model version in the worker
(:mod:`bidder.labels.calibration`), AUC, log loss, NE, calibration and PR-AUC in ``bidder scoreboard --online``
(:mod:`bidder.lifecycle.online_board`).

Scope and its bias: only winners get labels, so only winners are shadow-scored. They were chosen by the
champion; a shadow's online metrics are therefore measured on the champion's selection (the usual
limit of shadow evaluation; an A/B split of traffic is what measures a challenger's own selection).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bidder.events import AuctionOutcome
from bidder.lifecycle.dataset import write_atomically
from bidder.lifecycle.promotion import install_release, release_name
from bidder.query.scoring import Models, family_in, load_models

__all__ = ["SHADOW", "ShadowPointer", "read_pointer", "shadow_outcomes", "start", "stop"]

SHADOW = "SHADOW"
_TARGETS = ("ctr", "cvr")


def shadow_outcomes(models: Models, outcomes: Sequence[AuctionOutcome]) -> list[AuctionOutcome]:
    """``outcomes`` with ``extra["shadow"]``: the shadow pair's pCTR and pCVR for every winner.

    One scoring call per model for all winners of the batch; outcomes without winners (shed) are
    returned unchanged. Nothing else of an outcome changes."""
    rows = [w.features for o in outcomes for w in o.winners]
    if not rows:
        return list(outcomes)
    x = np.ascontiguousarray(np.asarray(rows, np.float32))
    pctr = models.ctr.score(x).astype(np.float32, copy=False)
    pcvr = models.cvr.score(x).astype(np.float32, copy=False)
    versions = models.versions
    out: list[AuctionOutcome] = []
    off = 0
    for o in outcomes:
        n = len(o.winners)
        if n == 0:
            out.append(o)
            continue
        shadow = {"versions": versions, "pctr": pctr[off : off + n], "pcvr": pcvr[off : off + n]}
        out.append(replace(o, extra={**o.extra, "shadow": shadow}))
        off += n
    return out


@dataclass(frozen=True, slots=True)
class ShadowPointer:
    """What ``<model_dir>/SHADOW`` names."""

    release: str
    family: str
    directory: Path
    versions: dict[str, str]


def read_pointer(model_dir: Path) -> ShadowPointer | None:
    """The shadow named by ``<model_dir>/SHADOW``, or None when there is none (or it is unreadable)."""
    try:
        info = json.loads((Path(model_dir) / SHADOW).read_text())
        return ShadowPointer(str(info["release"]), str(info["family"]), Path(model_dir) / str(info["path"]),
                             {str(k): str(v) for k, v in info["versions"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def start(challenger_dir: Path, *, model_dir: Path, clock: Callable[[], float], source: str = "") -> dict[str, Any]:
    """Install ``challenger_dir``'s pair as the shadow of ``model_dir``'s workers; returns the pointer."""
    challenger_dir, model_dir = Path(challenger_dir), Path(model_dir)
    family = family_in(challenger_dir)
    models = load_models(challenger_dir, family, "cpu", 1, 1)  # refuses bad files before anything is copied
    release = release_name(family, models)
    rel_dir = model_dir / "shadow" / release
    install_release(challenger_dir, [f"{family}_{t}{ext}" for t in _TARGETS for ext in (".onnx", ".json")], rel_dir)
    load_models(rel_dir, family, "cpu", 1, 1)  # the installed copy must load before the pointer names it
    pointer = {"release": release, "family": family, "path": f"shadow/{release}", "versions": models.versions,
               "started_at": datetime.fromtimestamp(clock(), UTC).isoformat(), "source": source}
    write_atomically(model_dir / SHADOW, (json.dumps(pointer, indent=1) + "\n").encode())
    return pointer


def stop(model_dir: Path) -> bool:
    """Stop shadowing (workers drop the shadow within a poll); False if none was set."""
    try:
        (Path(model_dir) / SHADOW).unlink()
    except FileNotFoundError:
        return False
    return True
