"""Online metrics per model version from the ``labels`` topic: the serving model beside its shadow.

Every impression's labels record (:mod:`bidder.attribution`) names the model versions that priced it and,
while a shadow ran (:mod:`bidder.shadow`), the shadow's versions and predictions for the same impression.
:func:`fold_online` keeps per ``impression_id`` the provisional example and the highest label version
(clicked, converted); only impressions older than ``mature_after_s`` (click window + attribution window:
no click or purchase can still change them) are judged. :func:`online_rows` then evaluates, per target
and model version, with the scoreboard's metrics (:func:`bidder.scoreboard.evaluate`):

* CTR on every matured impression (``p`` = pCTR, ``y`` = clicked),
* CVR on every matured clicked impression (``p`` = pCVR, ``y`` = converted),

and, where a shadow scored impressions, the serving version **on those same impressions** beside it, so
the two rows differ only in the model. ``bidder scoreboard --online`` prints them.

>>> recs = [{"type": "impressions", "query_id": "q", "ts": 0.0, "model_versions": {"ctr": "a", "cvr": "b"},
...          "shadow_versions": {"ctr": "s", "cvr": "t"}, "examples": [
...     {"impression_id": "q:0", "pctr": 0.9, "pcvr": 0.5, "shadow_pctr": 0.2, "shadow_pcvr": 0.5},
...     {"impression_id": "q:1", "pctr": 0.1, "pcvr": 0.5, "shadow_pctr": 0.8, "shadow_pcvr": 0.5}]},
...         {"type": "label_update", "impression_id": "q:0", "label_version": 1, "clicked": 1, "converted": 0}]
>>> fold = fold_online(recs, as_of=100.0, mature_after_s=10.0)
>>> {(r.name, r.target): r.metrics["auc"] for r in online_rows(fold) if r.target == "ctr"}
{('serving a', 'ctr'): 1.0, ('shadow s', 'ctr'): 0.0, ('serving a (vs shadow)', 'ctr'): 1.0}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bidder.scoreboard import Row, evaluate

__all__ = ["OnlineFold", "fold_online", "online_rows"]

_NAN = math.nan


@dataclass
class OnlineFold:
    """Matured impressions as columns."""

    ts: list[float] = field(default_factory=list)
    version: dict[str, list[str]] = field(default_factory=lambda: {"ctr": [], "cvr": []})
    p: dict[str, list[float]] = field(default_factory=lambda: {"ctr": [], "cvr": []})
    shadow_version: dict[str, list[str]] = field(default_factory=lambda: {"ctr": [], "cvr": []})
    shadow_p: dict[str, list[float]] = field(default_factory=lambda: {"ctr": [], "cvr": []})
    clicked: list[int] = field(default_factory=list)
    converted: list[int] = field(default_factory=list)
    pending: int = 0
    """impressions not matured yet (left out)"""
    updates_without_impression: int = 0

    @property
    def n(self) -> int:
        return len(self.ts)


def fold_online(records: Iterable[Mapping[str, Any]], *, as_of: float, mature_after_s: float) -> OnlineFold:
    """Fold ``labels`` records (any order; repeats harmless) into matured impressions."""
    shown: dict[str, tuple[float, Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]]] = {}
    best: dict[str, tuple[int, int, int]] = {}
    for rec in records:
        kind = rec.get("type")
        if kind == "impressions":
            versions = rec.get("model_versions") or {}
            shadow = rec.get("shadow_versions") or {}
            for ex in rec.get("examples", ()):
                shown.setdefault(str(ex["impression_id"]), (float(rec["ts"]), versions, shadow, ex))
        elif kind == "label_update":
            iid = str(rec["impression_id"])
            label = (int(rec.get("label_version", 0)), int(rec.get("clicked", 0)), int(rec.get("converted", 0)))
            if label > best.get(iid, (-1, 0, 0)):
                best[iid] = label
    out = OnlineFold()
    out.updates_without_impression = sum(1 for iid in best if iid not in shown)
    for iid, (ts, versions, shadow, ex) in shown.items():
        if as_of - ts < mature_after_s:
            out.pending += 1
            continue
        _, clicked, converted = best.get(iid, (0, 0, 0))
        out.ts.append(ts)
        out.clicked.append(clicked)
        out.converted.append(converted)
        for t in ("ctr", "cvr"):
            out.version[t].append(str(versions.get(t, "")))
            out.p[t].append(float(ex.get(f"p{t}", _NAN)))
            s = ex.get(f"shadow_p{t}")
            out.shadow_version[t].append(str(shadow.get(t, "")) if s is not None else "")
            out.shadow_p[t].append(_NAN if s is None else float(s))
    return out


def online_rows(fold: OnlineFold, *, min_examples: int = 1) -> list[Row]:
    """Scoreboard rows (kind ``online``) per target and model version; serving vs shadow on shared rows."""
    rows: list[Row] = []
    clicked = np.asarray(fold.clicked, np.int64)
    converted = np.asarray(fold.converted, np.int64)
    for t in ("ctr", "cvr"):
        among = np.ones(fold.n, bool) if t == "ctr" else clicked == 1
        y = (clicked if t == "ctr" else converted).astype(np.float64)
        version = np.asarray(fold.version[t], object)
        p = np.asarray(fold.p[t], np.float64)
        s_version = np.asarray(fold.shadow_version[t], object)
        s_p = np.asarray(fold.shadow_p[t], np.float64)
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


def main(argv: list[str] | None = None) -> int:
    """``bidder scoreboard --online (--topic labels | --labels FILE.jsonl) [--mature-after-s S]``."""
    import argparse
    import sys
    import time
    from pathlib import Path

    from bidder import dataset as ds
    from bidder.scoreboard import plot, render
    from bidder.settings import Settings

    ap = argparse.ArgumentParser(prog="bidder scoreboard --online",
                                 description="online metrics per model version (serving and shadow) from labels")
    ap.add_argument("--online", action="store_true", help=argparse.SUPPRESS)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--topic", help="read this labels topic from the beginning (BIDDER_KAFKA_BOOTSTRAP)")
    src.add_argument("--labels", type=Path, help="JSONL dump of the labels topic")
    ap.add_argument("--mature-after-s", type=float, default=None,
                    help="judge impressions at least this old (default: click window + attribution window)")
    ap.add_argument("--as-of", type=float, default=None, help="event time of 'now' (default: the wall clock)")
    ap.add_argument("--plot", type=Path, default=None, help="also write the scoreboard plot here")
    args = ap.parse_args(argv)
    settings = Settings()
    if args.topic is not None:
        if not settings.kafka_bootstrap:
            print("--topic needs BIDDER_KAFKA_BOOTSTRAP", file=sys.stderr)
            return 2
        records: Iterable[Mapping[str, Any]] = ds.read_labels_topic(settings.kafka_bootstrap, settings=settings,
                                                                    topic=args.topic)
    else:
        records = ds.read_jsonl(args.labels)
    mature = (settings.click_window_s + settings.attribution_window_s if args.mature_after_s is None
              else args.mature_after_s)
    fold = fold_online(records, as_of=time.time() if args.as_of is None else args.as_of, mature_after_s=mature)
    rows = online_rows(fold)
    title = (f"online: {fold.n} matured impressions ({sum(fold.clicked)} clicked, {sum(fold.converted)} "
             f"converted), {fold.pending} not matured")
    print(render(rows, title=title))
    if args.plot is not None and rows:
        print(f"plot: {plot(rows, args.plot, title=title)}")
    return 0 if rows else 1
