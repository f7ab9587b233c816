"""Frozen datasets: matured labels folded into content-hashed Parquet files with a time-based split.

Source: label records (:mod:`bidder.labels.attribution`), from the topics (:data:`LABEL_TOPICS`) or a JSONL
dump, as an iterable of dicts. ``"impressions"`` records (the ``impressions`` topic) carry one example per
served slot (features as served, provisional ``clicked=0, converted=0``); ``"label_update"`` records (the
``labels`` topic) correct one ``impression_id``.

Folding rules (:func:`fold_labels`):

* per ``impression_id`` the record with the highest ``label_version`` wins (0 provisional, 1 clicked,
  2 converted); equal versions are the same fact delivered twice, so redelivery changes nothing and the
  result does not depend on arrival order; an update may arrive before its impression;
* updates whose impression never arrived are counted (``orphan_updates``) and dropped;
* a label is *matured* once its impression is older than ``mature_after_s`` at ``as_of`` (the latest
  timestamp seen, unless given). Only matured rows are kept: a younger impression may still be clicked
  or converted. The default is ``click_window_s + attribution_window_s`` of the settings (900 + 600 s):
  a click may come up to the click window after the auction and its purchase up to the attribution
  window after the click.

Split (:class:`Window`): train on ``[train_start, train_end)``, test on ``[train_end, test_end]``, the
period right after it, like the owner's offline evaluations. Rows outside are not frozen.

On disk, under ``root`` (default ``datasets/``)::

    datasets/manifest.json                 {"datasets": {id: entry}}, rewritten atomically
    datasets/<id>/train.parquet            one row per matured impression, sorted by (ts, impression_id)
    datasets/<id>/test.parquet

``id`` is the first 16 hex digits of the *content hash*: sha256 over the feature spec fingerprint, the
window and every column of both splits in canonical order (not over the Parquet bytes, which depend on
the writer's version). Freezing the same data again yields the same id and writes nothing. A frozen
dataset never changes: each file's sha256 is in the manifest and :func:`load` checks it, and the
content hash of what was read; a changed file raises :class:`DatasetCorruptError`.

Columns: ``impression_id, query_id`` (str), ``ts`` (float64, seconds), ``slot, listing_id, shop_id``
(int64), ``pctr, pcvr`` (float32, served predictions), ``bid, price`` (float64), one float32 column per
feature of :data:`bidder.query.features.FEATURE_SPEC` (in spec order), ``clicked, converted, label_version``
(int8), ``p_click_true, p_buy_true`` (float64, the simulator's true probabilities, NaN when the source
does not know them), ``ctr_version, cvr_version`` (str, the models that served).

>>> recs = [{"type": "impressions", "query_id": "q", "ts": 0.0, "examples": [
...     {"impression_id": "q:0", "slot": 0, "features": [0.0] * 18}]},
...     {"type": "label_update", "impression_id": "q:0", "clicked": 1, "converted": 0, "label_version": 1}]
>>> fold = fold_labels(recs, as_of=10_000.0, mature_after_s=1500.0)
>>> fold.rows["clicked"].tolist(), fold.orphan_updates
([1], 0)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bidder.query.features import FEATURE_SPEC

if TYPE_CHECKING:
    from bidder.settings import Settings

__all__ = [
    "LABEL_TOPICS",
    "SHADOW_COLUMNS",
    "DatasetCorruptError",
    "Fold",
    "Frame",
    "FrozenDataset",
    "MissingExamplesError",
    "TopicSnapshot",
    "Window",
    "fold_labels",
    "freeze",
    "jsonl_source",
    "load",
    "read_jsonl",
    "read_label_topics",
    "read_topic_snapshot",
    "records_from_traffic",
    "simulator_source",
    "topic_source",
    "write_atomically",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
DEFAULT_ROOT = Path("datasets")
MANIFEST = "manifest.json"
FEATURES = FEATURE_SPEC.names
_STR = ("impression_id", "query_id", "ctr_version", "cvr_version")
_I64 = ("slot", "listing_id", "shop_id")
_F64 = ("ts", "bid", "price", "p_click_true", "p_buy_true")
_F32 = ("pctr", "pcvr", *FEATURES)
_I8 = ("clicked", "converted", "label_version")
COLUMNS: tuple[str, ...] = ("impression_id", "query_id", "ts", *_I64, "pctr", "pcvr", "bid", "price", *FEATURES,
                            *_I8, "p_click_true", "p_buy_true", "ctr_version", "cvr_version")


class DatasetCorruptError(RuntimeError):
    """A frozen dataset's files no longer match its manifest (or the manifest does not name it)."""


def _dtype(col: str) -> Any:
    if col in _STR:
        return object
    if col in _I64:
        return np.int64
    if col in _F64:
        return np.float64
    if col in _I8:
        return np.int8
    return np.float32


@dataclass(frozen=True, slots=True)
class Fold:
    """Matured labelled impressions as columns (``rows``), with what was dropped on the way."""

    rows: dict[str, npt.NDArray[Any]]
    as_of: float
    impressions: int
    updates: int
    orphan_updates: int
    immature: int

    @property
    def n(self) -> int:
        return len(self.rows["ts"])


SHADOW_COLUMNS: tuple[str, ...] = ("shadow_pctr", "shadow_pcvr", "shadow_ctr_version", "shadow_cvr_version")
"""what ``fold_labels(..., shadow=True)`` adds (not frozen): a shadow model's predictions for the same
impressions (NaN and "" where none ran), for :mod:`bidder.lifecycle.online_board`"""


def fold_labels(records: Iterable[Mapping[str, Any]], *, as_of: float | None = None,
                mature_after_s: float, shadow: bool = False) -> Fold:
    """Fold updates onto impressions (highest ``label_version`` wins), keep matured rows; see the header.
    ``shadow`` also keeps :data:`SHADOW_COLUMNS`."""
    examples: dict[str, dict[str, Any]] = {}
    best: dict[str, tuple[int, int, int]] = {}  # impression_id -> (label_version, clicked, converted)
    latest = -np.inf
    n_imp = n_upd = 0
    for rec in records:
        if not isinstance(rec, Mapping):  # a dump's stray line; unknown record types are skipped below
            continue
        kind = rec.get("type")
        if rec.get("ts") is not None:
            latest = max(latest, float(rec["ts"]))
        if kind == "impressions":
            versions = rec.get("model_versions") or {}
            for ex in rec.get("examples", ()):
                iid = str(ex["impression_id"])
                n_imp += 1
                examples[iid] = {
                    "impression_id": iid,
                    "query_id": str(rec.get("query_id", iid.rsplit(":", 1)[0])),
                    "ts": float(rec["ts"]),
                    "slot": int(ex.get("slot", 0)),
                    "listing_id": int(ex.get("listing_id", 0)),
                    "shop_id": int(ex.get("shop_id", 0)),
                    "pctr": float(ex.get("pctr", np.nan)),
                    "pcvr": float(ex.get("pcvr", np.nan)),
                    "bid": float(ex.get("bid", np.nan)),
                    "price": float(ex.get("price", np.nan)),
                    "features": ex["features"],
                    "p_click_true": float(ex.get("p_click_true", np.nan)),
                    "p_buy_true": float(ex.get("p_buy_true", np.nan)),
                    "ctr_version": str(versions.get("ctr", "")),
                    "cvr_version": str(versions.get("cvr", "")),
                }
                if shadow:
                    shadow_versions = rec.get("shadow_versions") or {}
                    for t in ("ctr", "cvr"):
                        p = ex.get(f"shadow_p{t}")
                        examples[iid][f"shadow_p{t}"] = np.nan if p is None else float(p)
                        examples[iid][f"shadow_{t}_version"] = "" if p is None else str(shadow_versions.get(t, ""))
                _keep(best, iid, (int(rec.get("label_version", 0)), int(ex.get("clicked", 0)),
                                  int(ex.get("converted", 0))))
        elif kind == "label_update":
            n_upd += 1
            _keep(best, str(rec["impression_id"]),
                  (int(rec["label_version"]), int(rec["clicked"]), int(rec["converted"])))
    orphans = sum(1 for iid in best if iid not in examples)
    cut = (latest if as_of is None else as_of) - mature_after_s
    kept = sorted((e for e in examples.values() if e["ts"] <= cut), key=lambda e: (e["ts"], e["impression_id"]))
    rows: dict[str, npt.NDArray[Any]] = {}
    for col in COLUMNS:
        if col in FEATURES:
            continue
        if col in _I8:
            idx = ("label_version", "clicked", "converted").index(col)
            rows[col] = np.array([best[e["impression_id"]][idx] for e in kept], np.int8)
        else:
            rows[col] = np.array([e[col] for e in kept], _dtype(col))
    x = np.array([e["features"] for e in kept], np.float32).reshape(len(kept), len(FEATURES))
    for j, name in enumerate(FEATURES):
        rows[name] = np.ascontiguousarray(x[:, j])
    columns = COLUMNS
    if shadow:
        columns = (*COLUMNS, *SHADOW_COLUMNS)
        for col in SHADOW_COLUMNS:
            rows[col] = np.array([e[col] for e in kept], object if col.endswith("version") else np.float64)
    return Fold(rows={c: rows[c] for c in columns}, as_of=float(latest if as_of is None else as_of),
                impressions=n_imp, updates=n_upd, orphan_updates=orphans, immature=len(examples) - len(kept))


def _keep(best: dict[str, tuple[int, int, int]], iid: str, label: tuple[int, int, int]) -> None:
    old = best.get(iid)
    if old is None or label[0] > old[0]:
        best[iid] = label


@dataclass(frozen=True, slots=True)
class Window:
    """Train on ``[train_start, train_end)``, test on ``[train_end, test_end]`` (epoch seconds)."""

    train_start: float
    train_end: float
    test_end: float

    @classmethod
    def by_fraction(cls, ts: F64, train_frac: float = 0.8) -> Window:
        """The whole time span of ``ts``, cut at ``train_frac`` of its duration."""
        if len(ts) == 0:
            raise ValueError("no matured rows to split")
        lo, hi = float(ts.min()), float(ts.max())
        return cls(lo, lo + train_frac * (hi - lo), hi)

    @classmethod
    def by_duration(cls, ts: F64, *, train_s: float, test_s: float) -> Window:
        """The test period ends at the latest row; the train window is the ``train_s`` before it."""
        if len(ts) == 0:
            raise ValueError("no matured rows to split")
        end = float(ts.max())
        return cls(end - test_s - train_s, end - test_s, end)

    def to_dict(self) -> dict[str, Any]:
        return {"train_start": self.train_start, "train_end": self.train_end, "test_end": self.test_end,
                **{f"{k}_utc": _iso(v) for k, v in (("train_start", self.train_start),
                                                   ("train_end", self.train_end), ("test_end", self.test_end))}}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Frame:
    """One split as columns; :meth:`target` gives the model-ready view."""

    cols: dict[str, npt.NDArray[Any]]

    @property
    def n(self) -> int:
        return len(self.cols["ts"])

    @property
    def x(self) -> F32:
        """``(n, d)`` float32 features in spec order."""
        return np.ascontiguousarray(np.column_stack([self.cols[f] for f in FEATURES]).astype(np.float32)
                                    .reshape(self.n, len(FEATURES)))

    def target(self, target: str) -> tuple[F32, F64, F64, F64]:
        """``(x, y, oracle, ts)``: CTR on every impression, CVR on clicked impressions only."""
        if target == "ctr":
            m = np.ones(self.n, bool)
            y, oracle = self.cols["clicked"], self.cols["p_click_true"]
        elif target == "cvr":
            m = self.cols["clicked"].astype(bool)
            y, oracle = self.cols["converted"], self.cols["p_buy_true"]
        else:
            raise ValueError(f"unknown target {target!r}")
        return (self.x[m], np.asarray(y[m], np.float64), np.asarray(oracle[m], np.float64),
                np.asarray(self.cols["ts"][m], np.float64))

    def take(self, idx: npt.NDArray[np.int64]) -> Frame:
        return Frame({k: v[idx] for k, v in self.cols.items()})


@dataclass(frozen=True, slots=True)
class FrozenDataset:
    """A frozen dataset as named by the manifest; ``train``/``test`` are read and verified at load."""

    id: str
    entry: dict[str, Any]
    train: Frame
    test: Frame

    @property
    def window(self) -> Window:
        w = self.entry["window"]
        return Window(float(w["train_start"]), float(w["train_end"]), float(w["test_end"]))


def content_hash(train: Mapping[str, npt.NDArray[Any]], test: Mapping[str, npt.NDArray[Any]],
                 window: Window) -> str:
    """sha256 of the spec fingerprint, the window and every column of both splits (canonical order)."""
    h = hashlib.sha256()
    h.update(f"spec={FEATURE_SPEC.fingerprint};window={window.train_start!r},{window.train_end!r},"
             f"{window.test_end!r};".encode())
    for part, cols in (("train", train), ("test", test)):
        h.update(f"{part}:{len(cols['ts'])};".encode())
        for c in COLUMNS:
            a = cols[c]
            if c in _STR:
                h.update("\x1f".join(str(v) for v in a.tolist()).encode())
            else:
                h.update(np.ascontiguousarray(a, _dtype(c)).tobytes())
            h.update(b"\x1e")
    return h.hexdigest()


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_parquet(cols: Mapping[str, npt.NDArray[Any]], path: Path) -> None:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    arrays = {c: pa.array(cols[c].tolist(), pa.string()) if c in _STR else pa.array(cols[c]) for c in COLUMNS}
    table = pa.table(arrays).replace_schema_metadata({"feature_spec": FEATURE_SPEC.fingerprint})
    pq.write_table(table, path, compression="zstd", write_statistics=False)


def _read_parquet(path: Path) -> dict[str, npt.NDArray[Any]]:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    if t.column_names != list(COLUMNS):
        raise DatasetCorruptError(f"{path}: columns {t.column_names[:5]}... differ from the frozen schema")
    return {c: (np.array(t.column(c).to_pylist(), object) if c in _STR
                else np.asarray(t.column(c).to_numpy(), _dtype(c))) for c in COLUMNS}


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (temp file, fsync, ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(root: Path = DEFAULT_ROOT) -> dict[str, Any]:
    p = Path(root) / MANIFEST
    if not p.exists():
        return {"datasets": {}}
    data: dict[str, Any] = json.loads(p.read_text())
    return data


def freeze(
    records: Iterable[Mapping[str, Any]],
    *,
    root: Path = DEFAULT_ROOT,
    mature_after_s: float,
    clock: Callable[[], float],
    as_of: float | None = None,
    train_frac: float = 0.8,
    train_s: float | None = None,
    test_s: float | None = None,
    source: Mapping[str, Any] | None = None,
) -> FrozenDataset:
    """Fold, split and freeze ``records`` under ``root``; an already frozen identical dataset is returned
    untouched (after verifying its files). ``clock`` stamps ``created_at`` in the manifest only."""
    fold = fold_labels(records, as_of=as_of, mature_after_s=mature_after_s)
    ts = fold.rows["ts"]
    if (train_s is None) != (test_s is None):
        raise ValueError("give both train_s and test_s, or neither (then train_frac splits)")
    window = (Window.by_duration(ts, train_s=train_s, test_s=test_s) if train_s is not None and test_s is not None
              else Window.by_fraction(ts, train_frac))
    tr = np.flatnonzero((ts >= window.train_start) & (ts < window.train_end))
    te = np.flatnonzero((ts >= window.train_end) & (ts <= window.test_end))
    if len(tr) == 0 or len(te) == 0:
        raise ValueError(f"empty split: {len(tr)} train rows, {len(te)} test rows in {window}")
    train = {c: v[tr] for c, v in fold.rows.items()}
    test = {c: v[te] for c, v in fold.rows.items()}
    full = content_hash(train, test, window)
    ds_id = full[:16]
    root = Path(root)
    manifest = read_manifest(root)
    if ds_id in manifest["datasets"]:
        return load(ds_id, root=root)  # verifies: a frozen dataset is never rewritten
    folder = root / ds_id
    if folder.exists() and any(folder.iterdir()):
        raise DatasetCorruptError(f"{folder} exists but the manifest does not name it: refusing to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for part, cols in (("train", train), ("test", test)):
        tmp = folder / f".{part}.parquet.tmp"
        _write_parquet(cols, tmp)
        os.replace(tmp, folder / f"{part}.parquet")
        files[f"{part}.parquet"] = _file_sha(folder / f"{part}.parquet")
    entry = {
        "id": ds_id,
        "content_sha256": full,
        "created_at": _iso(clock()),
        "feature_spec": FEATURE_SPEC.to_dict(),
        "rows": {"train": len(tr), "test": len(te),
                 "train_clicks": int(train["clicked"].sum()), "test_clicks": int(test["clicked"].sum()),
                 "train_conversions": int(train["converted"].sum()),
                 "test_conversions": int(test["converted"].sum())},
        "window": window.to_dict(),
        "split": {"kind": "time", "train_frac": None if train_s is not None else train_frac,
                  "train_s": train_s, "test_s": test_s},
        "maturity": {"as_of": fold.as_of, "as_of_utc": _iso(fold.as_of), "mature_after_s": mature_after_s},
        "source": {**(source or {}), "impressions": fold.impressions, "updates": fold.updates,
                   "orphan_updates": fold.orphan_updates, "immature": fold.immature,
                   "outside_window": fold.n - len(tr) - len(te)},
        "has_oracle": bool(np.isfinite(fold.rows["p_click_true"]).any()),
        "files": files,
    }
    manifest = read_manifest(root)  # re-read: another freeze may have landed meanwhile
    manifest["datasets"][ds_id] = entry
    write_atomically(root / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return FrozenDataset(ds_id, entry, Frame(train), Frame(test))


def load(ds_id: str, *, root: Path = DEFAULT_ROOT) -> FrozenDataset:
    """Read a frozen dataset; :class:`DatasetCorruptError` when a file or the content differ from the manifest."""
    root = Path(root)
    entry = read_manifest(root)["datasets"].get(ds_id)
    if entry is None:
        raise DatasetCorruptError(f"dataset {ds_id!r} is not in {root / MANIFEST}")
    parts: dict[str, dict[str, npt.NDArray[Any]]] = {}
    for part in ("train", "test"):
        path = root / ds_id / f"{part}.parquet"
        if not path.exists():
            raise DatasetCorruptError(f"{path} is missing")
        got = _file_sha(path)
        if got != entry["files"][f"{part}.parquet"]:
            raise DatasetCorruptError(f"{path} changed since it was frozen: sha256 {got[:12]}..., manifest "
                                 f"{entry['files'][f'{part}.parquet'][:12]}...")
        parts[part] = _read_parquet(path)
    w = entry["window"]
    window = Window(float(w["train_start"]), float(w["train_end"]), float(w["test_end"]))
    if content_hash(parts["train"], parts["test"], window) != entry["content_sha256"]:
        raise DatasetCorruptError(f"dataset {ds_id}: content hash differs from the manifest")
    return FrozenDataset(ds_id, entry, Frame(parts["train"]), Frame(parts["test"]))


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL dump (one ``labels`` record per line; blank lines skipped)."""
    with Path(path).open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


@dataclass(frozen=True, slots=True)
class TopicSnapshot:
    """Every decodable record of a topic below ``end_offsets`` (partition -> first offset *not* read), the
    ends the topic had when reading started: what a freeze from the topic saw, so it can be read again."""

    topic: str
    records: list[dict[str, Any]]
    end_offsets: dict[int, int]
    skipped: int
    """records that were not a JSON object (ignored, like any unknown record type)"""


def read_topic_snapshot(bootstrap: str, *, settings: Settings | None = None, topic: str = "labels",
                        idle_polls: int = 3) -> TopicSnapshot:
    """Every record of ``topic`` from the beginning up to the end it had when reading started (a synchronous
    wrapper around the group-less consumer of :func:`streams.tail.tail_consumer`). Records written
    meanwhile are left out, so the result is exactly the records below :attr:`TopicSnapshot.end_offsets`.
    A record a fetch skipped (:mod:`bidder.replica.offset_gaps`) is fetched again, so no label row goes missing."""
    import asyncio

    import orjson

    from bidder.settings import Settings
    from streams.gap_repair import GapRepairer
    from streams.tail import tail_consumer

    settings = settings or Settings()
    loop = asyncio.new_event_loop()
    try:
        consumer = loop.run_until_complete(tail_consumer(settings, bootstrap, [topic], from_beginning=True))
        repairer = GapRepairer(settings, bootstrap=bootstrap, name="dataset")
        try:
            parts = list(consumer.assignment())
            end = loop.run_until_complete(consumer.end_offsets(parts))
            out: list[dict[str, Any]] = []
            skipped = idle = 0

            def keep(value_bytes: bytes | None) -> None:
                nonlocal skipped
                try:
                    value = orjson.loads(value_bytes) if value_bytes is not None else None
                except orjson.JSONDecodeError:
                    value = None
                if isinstance(value, dict):
                    out.append(value)
                else:
                    skipped += 1

            while idle < idle_polls and any(loop.run_until_complete(consumer.position(tp)) < end[tp]
                                            for tp in parts):
                batches = loop.run_until_complete(consumer.getmany(timeout_ms=500))
                idle = 0 if batches else idle + 1
                for tp, records in batches.items():
                    for r in records:
                        if r.offset >= end[tp]:
                            continue
                        for again in loop.run_until_complete(
                                repairer.missed_before(tp.topic, tp.partition, r.offset)):
                            keep(again.value)
                        keep(r.value)
            return TopicSnapshot(topic, out, {tp.partition: int(end[tp]) for tp in sorted(parts)}, skipped)
        finally:
            loop.run_until_complete(consumer.stop())
            loop.run_until_complete(repairer.stop())
    finally:
        loop.close()


LABEL_TOPICS: tuple[str, ...] = ("impressions", "labels")
"""the online training data: the examples, then the updates that correct them (:mod:`bidder.topics`)"""


class MissingExamplesError(ValueError):
    """Label updates were read but not one example: the topics given leave out ``impressions``."""


def read_label_topics(bootstrap: str, *, settings: Settings | None = None,
                      topics: Sequence[str] = LABEL_TOPICS, idle_polls: int = 3) -> list[TopicSnapshot]:
    """:func:`read_topic_snapshot` of each of ``topics``, one after the other. The examples are read first:
    an update written meanwhile may then be read without its impression (an orphan, dropped by the fold),
    but every update of an impression read is older than the read of ``labels``, so a matured example is
    never frozen without the updates it had (they come within the maturity after their impression).

    Raises :class:`MissingExamplesError` when updates were read and no example (``--topic labels`` alone)."""
    snaps = [read_topic_snapshot(bootstrap, settings=settings, topic=t, idle_polls=idle_polls) for t in topics]
    kinds = {r.get("type") for snap in snaps for r in snap.records}
    if "label_update" in kinds and "impressions" not in kinds:
        raise MissingExamplesError(
            f"{', '.join(topics)} hold label updates but no example: the examples are on the impressions topic "
            f"(read {' and '.join(LABEL_TOPICS)})")
    return snaps


def records_from_traffic(log: Any, *, query_prefix: str = "sim") -> Iterator[dict[str, Any]]:
    """``labels`` records for an offline :class:`onnx_models.traffic.TrafficLog`, as the streaming loop
    would write them (provisional impressions, then click/purchase updates), with the simulator's true
    probabilities on each example so the frozen test set carries the oracle."""
    slot = np.asarray(log.slot)
    starts = np.flatnonzero(slot == 0)
    ends = np.append(starts[1:], len(slot))
    for q, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        qid = f"{query_prefix}-{q}"
        ts = float(log.ts[a])
        yield {
            "type": "impressions", "query_id": qid, "ts": ts, "label_version": 0,
            "model_versions": {"ctr": "policy-ctr_smoothed", "cvr": "policy-cvr_smoothed"},
            "examples": [
                {"impression_id": f"{qid}:{int(slot[i])}", "slot": int(slot[i]), "listing_id": 0, "shop_id": 0,
                 "pctr": float(log.x[i, 1]), "pcvr": float(log.x[i, 2]), "bid": 0.0, "price": 0.0,
                 "features": log.x[i].tolist(), "clicked": 0, "converted": 0,
                 "p_click_true": float(log.p_click[i]), "p_buy_true": float(log.p_buy[i])}
                for i in range(a, b)
            ],
        }
        for i in range(a, b):
            if log.clicked[i]:
                bought = bool(log.purchased[i])
                yield {"type": "label_update", "impression_id": f"{qid}:{int(slot[i])}", "query_id": qid,
                       "ts": ts, "clicked": 1, "converted": int(bought), "label_version": 2 if bought else 1}


Source = tuple[Iterable[Mapping[str, Any]], dict[str, Any]]
"""label records to freeze, and what the manifest records as their ``source``"""
SIMULATIONS = ("small", "medium", "full")
"""sizes of the offline simulator's traffic (:mod:`onnx_models.traffic`) a dataset can be frozen from"""


def jsonl_source(path: Path) -> Source:
    """The records of a JSONL dump of the label topics (impressions and updates, in any order)."""
    return read_jsonl(path), {"kind": "jsonl", "path": str(path)}


def topic_source(bootstrap: str, *, settings: Settings, topics: Sequence[str] = LABEL_TOPICS) -> Source:
    """Everything in ``topics`` from the beginning up to their end offsets now (:func:`read_label_topics`);
    the manifest records each topic's end offsets."""
    snaps = read_label_topics(bootstrap, settings=settings, topics=topics)
    return [r for snap in snaps for r in snap.records], {
        "kind": "topic", "topics": [snap.topic for snap in snaps], "bootstrap": bootstrap,
        "end_offsets": {snap.topic: {str(p): o for p, o in snap.end_offsets.items()} for snap in snaps},
        "not_objects": sum(snap.skipped for snap in snaps)}


def simulator_source(size: str, *, seed: int) -> Source:
    """Offline simulator traffic with the oracle's probabilities; its labels are final (mature at once)."""
    from onnx_models.traffic import SimConfig, simulate

    cfg = {"small": SimConfig.small(), "medium": SimConfig(n_log=10_000), "full": SimConfig()}[size]
    log = simulate(cfg, seed=seed)
    return records_from_traffic(log), {"kind": "simulator", "config": size, "seed": seed,
                                       "world_seed": cfg.world_seed}
