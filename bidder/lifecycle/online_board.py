"""Online metrics per model version from the ``labels`` topic: the serving model beside its shadow.

Every impression's labels record (:mod:`bidder.labels.attribution`) names the model versions that priced it and,
while a shadow ran (:mod:`bidder.query.shadow`), the shadow's versions and predictions for the same impression.
:func:`fold_online` (the frozen datasets' fold, :func:`bidder.lifecycle.dataset.fold_labels`, with the shadow columns)
keeps per ``impression_id`` the provisional example and the highest label version (clicked, converted); only
impressions older than ``mature_after_s`` (click window + attribution window:
no click or purchase can still change them) are judged. :func:`online_rows` then evaluates, per target
and model version, with the scoreboard's metrics (:func:`bidder.lifecycle.scoreboard.evaluate`):

* CTR on every matured impression (``p`` = pCTR, ``y`` = clicked),
* CVR on every matured clicked impression (``p`` = pCVR, ``y`` = converted),

and, where a shadow scored impressions, the serving version **on those same impressions** beside it, so
the two rows differ only in the model. ``bidder scoreboard --online`` prints them.

>>> recs = [{"type": "impressions", "query_id": "q", "ts": 0.0, "model_versions": {"ctr": "a", "cvr": "b"},
...          "shadow_versions": {"ctr": "s", "cvr": "t"}, "examples": [
...     {"impression_id": "q:0", "pctr": 0.9, "pcvr": 0.5, "shadow_pctr": 0.2, "shadow_pcvr": 0.5,
...      "features": [0] * 18},
...     {"impression_id": "q:1", "pctr": 0.1, "pcvr": 0.5, "shadow_pctr": 0.8, "shadow_pcvr": 0.5,
...      "features": [0] * 18}]},
...         {"type": "label_update", "impression_id": "q:0", "label_version": 1, "clicked": 1, "converted": 0}]
>>> fold = fold_online(recs, as_of=100.0, mature_after_s=10.0)
>>> {(r.name, r.target): r.metrics["auc"] for r in online_rows(fold) if r.target == "ctr"}
{('serving a', 'ctr'): 1.0, ('shadow s', 'ctr'): 0.0, ('serving a (vs shadow)', 'ctr'): 1.0}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from bidder.lifecycle.dataset import Fold, fold_labels
from bidder.lifecycle.scoreboard import Row, evaluate

__all__ = ["board_title", "fold_online", "online_rows"]


def fold_online(records: Iterable[Mapping[str, Any]], *, as_of: float, mature_after_s: float) -> Fold:
    """Matured impressions as columns, with the shadow's predictions: :func:`bidder.lifecycle.dataset.fold_labels`
    (the same fold a frozen dataset is made of) with its shadow columns."""
    return fold_labels(records, as_of=as_of, mature_after_s=mature_after_s, shadow=True)


def online_rows(fold: Fold, *, min_examples: int = 1) -> list[Row]:
    """Scoreboard rows (kind ``online``) per target and model version; serving vs shadow on shared rows."""
    rows: list[Row] = []
    cols = fold.rows
    clicked = cols["clicked"].astype(np.int64)
    for t in ("ctr", "cvr"):
        among = np.ones(fold.n, bool) if t == "ctr" else clicked == 1
        y = (cols["clicked"] if t == "ctr" else cols["converted"]).astype(np.float64)
        version = np.asarray(cols[f"{t}_version"], object)
        p = np.asarray(cols[f"p{t}"], np.float64)
        s_version = np.asarray(cols[f"shadow_{t}_version"], object)
        s_p = np.asarray(cols[f"shadow_p{t}"], np.float64)
        for v in sorted(set(version[among].tolist())):
            m = among & (version == v)
            if m.sum() >= min_examples:
                rows.append(Row(f"serving {v}", _family(v), "online", t, evaluate(y[m], p[m])))
        for sv in sorted(set(s_version[among].tolist()) - {""}):
            m = among & (s_version == sv) & np.isfinite(s_p)
            if m.sum() < min_examples:
                continue
            served = sorted(set(version[m].tolist()))
            rows.append(Row(f"shadow {sv}", _family(sv), "online", t, evaluate(y[m], s_p[m])))
            rows.append(Row(f"serving {'/'.join(served)} (vs shadow)", _family(served[0]), "online", t,
                            evaluate(y[m], p[m])))
    return rows


def _family(version: str) -> str:
    """``mlp-ctr-0123abcd`` -> ``mlp`` (versions are ``<family>-<target>-<sha>``)."""
    head = version.rsplit("-", 2)
    return head[0] if len(head) == 3 else "?"


def board_title(fold: Fold) -> str:
    """What the online scoreboard was judged on: matured impressions, clicks, conversions, not yet matured."""
    return (f"online: {fold.n} matured impressions ({int(fold.rows['clicked'].sum())} clicked, "
            f"{int(fold.rows['converted'].sum())} converted), {fold.immature} not matured")
