"""Deadline-aware micro-batching: many queries' candidate blocks in one scoring call.

On a GPU a 600-row call is mostly launch and copy overhead, so throughput comes from scoring several
queries' candidates in one call. :class:`MicroBatcher` sits between the query agent and the scorers:

* ``submit(key, x, budget_ms=...)`` queues one query's ``(n, d)`` float32 block with a deadline
  ``now + budget - elapsed``, less ``tail_ms`` kept for bidding and the auction after scoring.
* ``poll()`` runs every call that is due and returns the queries it finished. A call is due when the
  pending rows fill ``max_rows`` (trigger ``full``), the oldest block has waited ``max_wait_ms``
  (``wait``), or the earliest deadline leaves just the estimated call time (``deadline``).
  ``flush()`` runs everything now (``flush``). ``next_due()`` says when ``poll`` should next be called.
* A call takes blocks earliest deadline first (ties: submission order) up to ``max_rows`` rows; a block
  larger than what is left is split, its rest leads the next call. A block is not added when the
  longer call would make an earlier block in it miss its deadline. Every scorer in ``primary`` (e.g.
  CTR and CVR) runs once per call on the same rows; scores are scattered back by row offsets, so a
  query's scores are exactly those of scoring its rows alone with a row-wise model.
* Overload: the cost of a call is measured with the injected clock and fitted as
  ``a + b * rows`` (:class:`CallCost`). A query that has not started and cannot finish by its deadline
  on ``primary`` even alone (or arrives when ``max_pending_rows`` are queued) is shed: scored whole by
  ``fallback`` (a CPU session, a cheaper family) when that is configured and fits its deadline,
  otherwise rejected with a reason. A query never mixes models: once its first rows are scored on
  ``primary`` it finishes there (if late, it is counted ``late``).
* Every decision is counted (:attr:`MicroBatcher.counts`, :meth:`MicroBatcher.samples`).

Pure and synchronous: no threads, no I/O; time comes from ``clock`` (seconds, monotonic). The batcher
keeps a reference to each submitted block until its result is returned: do not overwrite it before.

>>> import numpy as np
>>> class Twice:
...     def score(self, x): return (2 * x[:, 0]).astype(np.float32)
>>> t = [0.0]
>>> mb = MicroBatcher(primary=[Twice()], max_rows=4, max_wait_ms=1.0, default_budget_ms=50.0,
...                   clock=lambda: t[0])
>>> mb.submit("a", np.ones((3, 1), np.float32)); mb.submit("b", np.full((2, 1), 5, np.float32))
>>> [(r.key, r.scores[0].tolist()) for r in mb.poll()]  # 5 rows >= 4: one full call, b split
[('a', [2.0, 2.0, 2.0])]
>>> t[0] = 0.002
>>> [(r.key, r.route, r.scores[0].tolist(), r.calls) for r in mb.poll()]  # b waited > 1 ms
[('b', 'primary', [10.0, 10.0], 2)]
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Self

import numpy as np
import numpy.typing as npt

from bidder.query.scoring import Scorer

__all__ = ["CallCost", "MicroBatcher", "Result", "Route", "Trigger"]

F32 = npt.NDArray[np.float32]
Route = Literal["primary", "fallback", "rejected"]
Trigger = Literal["full", "wait", "deadline", "flush"]


class CallCost:
    """Seconds per scoring call as ``a + b * rows``, fitted on exponentially weighted observations.

    Until two different call sizes have been seen the fit is proportional (``b = mean y / mean x``);
    before any observation it is the prior ``fixed_s + per_row_s * rows``.

    >>> c = CallCost(decay=1.0)
    >>> _ = c.update(100, 0.002).update(300, 0.004)
    >>> round(c.predict(200), 6), round(c.predict(0), 6)
    (0.003, 0.001)
    """

    def __init__(self, *, decay: float = 0.95, fixed_s: float = 0.0, per_row_s: float = 0.0) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.fixed_s = fixed_s
        self.per_row_s = per_row_s
        self._w = 0.0
        self._sx = 0.0
        self._sy = 0.0
        self._sxx = 0.0
        self._sxy = 0.0
        self._a = fixed_s
        self._b = per_row_s

    def update(self, rows: int, seconds: float) -> Self:
        d = self.decay
        x, y = float(rows), max(0.0, float(seconds))
        self._w = self._w * d + 1.0
        self._sx = self._sx * d + x
        self._sy = self._sy * d + y
        self._sxx = self._sxx * d + x * x
        self._sxy = self._sxy * d + x * y
        mx, my = self._sx / self._w, self._sy / self._w
        var = self._sxx / self._w - mx * mx
        if var > 1e-9 * max(1.0, mx * mx):
            b = (self._sxy / self._w - mx * my) / var
            a = my - b * mx
            if b < 0.0:
                a, b = my, 0.0
            elif a < 0.0:
                a, b = 0.0, my / mx if mx > 0 else 0.0
        else:
            a, b = 0.0, (my / mx if mx > 0 else 0.0)
        self._a, self._b = a, b
        return self

    def predict(self, rows: int) -> float:
        """Estimated seconds for one call of ``rows`` rows."""
        return self._a + self._b * rows

    @property
    def observed(self) -> bool:
        return self._w > 0.0


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome for one submitted query."""

    key: str
    route: Route
    scores: tuple[F32, ...]
    """one ``(n,)`` float32 array per scorer, in the order given; empty when rejected"""
    reason: str
    """why it was shed (``""`` on primary): ``deadline: ...`` or ``queue_full: ...``"""
    calls: int
    """scoring calls that carried its rows (more than one when it was split)"""
    submitted_at: float
    deadline: float
    """when its scores were due (clock seconds), the budget less ``tail_ms``"""
    finished_at: float

    @property
    def late(self) -> bool:
        return self.route != "rejected" and self.finished_at > self.deadline


@dataclass(slots=True)
class _Entry:
    key: str
    x: F32
    submitted_at: float
    deadline: float
    seq: int
    out: list[F32] = field(default_factory=list)
    done: int = 0
    """rows scored so far (on primary)"""
    calls: int = 0

    @property
    def remaining(self) -> int:
        return len(self.x) - self.done


class MicroBatcher:
    """Coalesce queries' candidate blocks into scoring calls ordered by deadline; see the module docstring."""

    def __init__(
        self,
        *,
        primary: Sequence[Scorer],
        fallback: Sequence[Scorer] | None = None,
        max_rows: int = 9600,
        max_wait_ms: float = 1.0,
        default_budget_ms: float = 50.0,
        tail_ms: float = 0.0,
        max_pending_rows: int | None = None,
        clock: Callable[[], float],
        primary_cost: CallCost | None = None,
        fallback_cost: CallCost | None = None,
    ) -> None:
        if not primary:
            raise ValueError("need at least one primary scorer")
        if fallback is not None and len(fallback) != len(primary):
            raise ValueError(f"fallback has {len(fallback)} scorers, primary {len(primary)}: they must pair up")
        if max_rows < 1 or max_wait_ms < 0 or default_budget_ms <= 0 or tail_ms < 0:
            raise ValueError("need max_rows >= 1, max_wait_ms >= 0, default_budget_ms > 0, tail_ms >= 0")
        self.primary = list(primary)
        self.fallback = None if fallback is None else list(fallback)
        self.max_rows = max_rows
        self.max_wait_ms = max_wait_ms
        self.default_budget_ms = default_budget_ms
        self.tail_ms = tail_ms
        self.max_pending_rows = max_pending_rows
        self.primary_cost = primary_cost if primary_cost is not None else CallCost()
        self.fallback_cost = fallback_cost if fallback_cost is not None else CallCost()
        self.counts: Counter[tuple[str, str]] = Counter()
        """monotonic totals keyed ``(metric, label)``; see :meth:`samples`"""
        self._clock = clock
        self._heap: list[tuple[float, int, _Entry]] = []
        self._shed: list[tuple[_Entry, str]] = []
        self._seq = 0
        self._pending_rows = 0
        self._oldest: dict[int, float] = {}
        """submit time by seq of queued blocks, in submission order (the clock is monotonic): first is oldest"""
        self._staging: F32 = np.empty((0, 0), np.float32)
        self._empty: list[_Entry] = []

    def replace_primary(self, primary: Sequence[Scorer]) -> None:
        """Score with ``primary`` from the next call on (a promoted model). Only between flushes: a
        block queued now would otherwise be scored partly by the old scorers and partly by the new.
        The cost model starts over (a new model, maybe a new family, has its own cost)."""
        if self.pending_queries:
            raise RuntimeError(f"{self.pending_queries} queries are queued: swap scorers between flushes")
        if not primary or (self.fallback is not None and len(self.fallback) != len(primary)):
            raise ValueError(f"need {len(self.fallback or primary) or 'at least one'} primary scorers")
        self.primary = list(primary)
        old = self.primary_cost
        self.primary_cost = CallCost(decay=old.decay, fixed_s=old.fixed_s, per_row_s=old.per_row_s)

    # -- queue ---------------------------------------------------------------------------------------
    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    @property
    def pending_queries(self) -> int:
        return len(self._heap) + len(self._shed) + len(self._empty)

    def submit(self, key: str, x: F32, *, budget_ms: float | None = None, elapsed_ms: float = 0.0) -> None:
        """Queue one query's ``(n, d)`` float32 rows; ``elapsed_ms`` is time it already spent upstream."""
        if x.dtype != np.float32 or x.ndim != 2:
            raise ValueError(f"expected (n, d) float32, got {x.shape} {x.dtype}")
        now = self._clock()
        budget = self.default_budget_ms if budget_ms is None else budget_ms
        deadline = now + (budget - elapsed_ms - self.tail_ms) / 1e3
        n = len(x)
        e = _Entry(key=key, x=x, submitted_at=now, deadline=deadline, seq=self._seq)
        self._seq += 1
        self.counts[("queries_submitted", "")] += 1
        self.counts[("rows_submitted", "")] += n
        if n == 0:  # nothing to score (no known candidates): answered on the next poll, no call
            self._empty.append(e)
            return
        if self.max_pending_rows is not None and self._pending_rows + n > self.max_pending_rows:
            self._shed.append((e, f"queue_full: {self._pending_rows} rows pending, limit {self.max_pending_rows}"))
            return
        heapq.heappush(self._heap, (deadline, e.seq, e))
        self._pending_rows += n
        self._oldest[e.seq] = now

    def next_due(self) -> float | None:
        """Clock time at which :meth:`poll` has work (``<= now``: call it now); ``None`` when idle."""
        if self._shed or self._empty:
            return -math.inf
        if not self._heap:
            return None
        if self._pending_rows >= self.max_rows:
            return -math.inf
        by_wait = self._oldest_at() + self.max_wait_ms / 1e3
        head = self._heap[0][2]
        by_deadline = head.deadline - self.primary_cost.predict(min(self._pending_rows, self.max_rows))
        return min(by_wait, by_deadline)

    def poll(self) -> list[Result]:
        """Run every call that is due now; the queries finished (scored, shed or rejected)."""
        out: list[Result] = []
        self._run_shed(out)
        while self._heap:
            now = self._clock()
            trigger = self._trigger(now)
            if trigger is None:
                break
            self._run_call(now, trigger, out)
        return out

    def flush(self) -> list[Result]:
        """Run calls until nothing is pending (shedding still applies)."""
        out: list[Result] = []
        self._run_shed(out)
        while self._heap:
            self._run_call(self._clock(), "flush", out)
        return out

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """``(name, labels, total)`` for Prometheus counters (``bidder_microbatch_*_total``).

        Names: ``queries_submitted``, ``rows_submitted``, ``calls{trigger}``, ``rows_scored``,
        ``split_queries``, ``decisions{route,reason}`` (reason ``ok``, ``deadline``, ``queue_full``),
        ``late_queries``, ``fallback_calls``, ``fallback_rows``.
        """
        res: list[tuple[str, dict[str, str], float]] = []
        for (name, label), v in sorted(self.counts.items()):
            labels: dict[str, str] = {}
            if name == "calls":
                labels = {"trigger": label}
            elif name == "decisions":
                route, reason = label.split(":")
                labels = {"route": route, "reason": reason}
            res.append((f"bidder_microbatch_{name}_total", labels, float(v)))
        return res

    # -- internals -----------------------------------------------------------------------------------
    def _trigger(self, now: float) -> Trigger | None:
        if self._pending_rows >= self.max_rows:
            return "full"
        if now >= self._oldest_at() + self.max_wait_ms / 1e3:
            return "wait"
        head = self._heap[0][2]
        if now >= head.deadline - self.primary_cost.predict(min(self._pending_rows, self.max_rows)):
            return "deadline"
        return None

    def _oldest_at(self) -> float:
        return next(iter(self._oldest.values()), math.inf)

    def _alone_s(self, rows: int) -> float:
        """Estimated seconds to score ``rows`` on primary in calls of at most ``max_rows``."""
        full, rest = divmod(rows, self.max_rows)
        return full * self.primary_cost.predict(self.max_rows) + (self.primary_cost.predict(rest) if rest else 0.0)

    def _pop_head(self) -> _Entry:
        e = heapq.heappop(self._heap)[2]
        self._pending_rows -= e.remaining
        self._oldest.pop(e.seq, None)
        return e

    def _run_call(self, now: float, trigger: Trigger, out: list[Result]) -> None:
        segs: list[tuple[_Entry, int, int]] = []  # entry, first row, row count
        rows = 0
        call_deadline = math.inf
        while self._heap and rows < self.max_rows:
            e = self._heap[0][2]
            started = e.done > 0
            if not started and now + self._alone_s(e.remaining) > e.deadline:
                self._pop_head()
                need_ms = self._alone_s(e.remaining) * 1e3
                self._shed.append((e, f"deadline: needs ~{need_ms:.3g} ms on primary, "
                                      f"{(e.deadline - now) * 1e3:.3g} ms left"))
                continue
            take = min(e.remaining, self.max_rows - rows)
            if segs:
                finish = now + self.primary_cost.predict(rows + take)
                if finish > call_deadline or (take == e.remaining and finish > e.deadline):
                    break
            segs.append((e, e.done, take))
            rows += take
            if take == e.remaining:
                heapq.heappop(self._heap)
                self._oldest.pop(e.seq, None)
                # protect its deadline from rows added later, unless it is late already (a committed split
                # block whose estimate was wrong): shrinking every call to wait for it would only add more late
                if now + self.primary_cost.predict(rows) <= e.deadline:
                    call_deadline = min(call_deadline, e.deadline)
            self._pending_rows -= take
            # a split block keeps its place at the head (same deadline and seq): the next call starts with it
            e.done += take
        if segs:
            self._score_segments(segs, trigger, out)
        self._run_shed(out)

    def _score_segments(self, segs: list[tuple[_Entry, int, int]], trigger: Trigger, out: list[Result]) -> None:
        rows = sum(t for _, _, t in segs)
        if len(segs) == 1 and segs[0][1] == 0 and segs[0][2] == len(segs[0][0].x):
            x = segs[0][0].x
        else:
            d = segs[0][0].x.shape[1]
            if self._staging.shape[0] < rows or self._staging.shape[1] != d:
                self._staging = np.empty((max(rows, self.max_rows), d), np.float32)
            x = self._staging[:rows]
            off = 0
            for e, lo, t in segs:
                x[off : off + t] = e.x[lo : lo + t]
                off += t
        t0 = self._clock()
        scores = [s.score(x) for s in self.primary]
        t1 = self._clock()
        self.primary_cost.update(rows, t1 - t0)
        self.counts[("calls", trigger)] += 1
        self.counts[("rows_scored", "")] += rows
        off = 0
        for e, lo, t in segs:
            if not e.out:
                e.out = [np.empty(len(e.x), np.float32) for _ in self.primary]
            for dst, src in zip(e.out, scores, strict=True):
                dst[lo : lo + t] = src[off : off + t]
            off += t
            e.calls += 1
            if lo + t == len(e.x):
                if e.calls > 1:
                    self.counts[("split_queries", "")] += 1
                self._finish(e, "primary", "", tuple(e.out), at=t1, out=out)

    def _run_shed(self, out: list[Result]) -> None:
        if self._empty:
            empty, self._empty = self._empty, []
            now = self._clock()
            for e in empty:
                self._finish(e, "primary", "", tuple(np.empty(0, np.float32) for _ in self.primary), at=now, out=out)
        if not self._shed:
            return
        shed, self._shed = self._shed, []
        now = self._clock()
        to_fallback: list[tuple[_Entry, str]] = []
        for e, why in shed:
            if self.fallback is not None and now + self.fallback_cost.predict(len(e.x)) <= e.deadline:
                to_fallback.append((e, why))
            else:
                extra = "" if self.fallback is None else "; the fallback cannot make it either"
                self._finish(e, "rejected", why + extra, (), at=now, out=out)
        if not to_fallback or self.fallback is None:
            return
        x = np.concatenate([e.x for e, _ in to_fallback]) if len(to_fallback) > 1 else to_fallback[0][0].x
        t0 = self._clock()
        scores = [s.score(x) for s in self.fallback]
        t1 = self._clock()
        self.fallback_cost.update(len(x), t1 - t0)
        self.counts[("fallback_calls", "")] += 1
        self.counts[("fallback_rows", "")] += len(x)
        off = 0
        for e, why in to_fallback:
            n = len(e.x)
            e.calls = 1
            self._finish(e, "fallback", why, tuple(s[off : off + n].copy() for s in scores), at=t1, out=out)
            off += n

    def _finish(self, e: _Entry, route: Route, reason: str, scores: tuple[F32, ...], *, at: float,
                out: list[Result]) -> None:
        r = Result(key=e.key, route=route, scores=scores, reason=reason, calls=e.calls, submitted_at=e.submitted_at,
                   deadline=e.deadline, finished_at=at)
        self.counts[("decisions", f"{route}:{reason.split(':', maxsplit=1)[0] if reason else 'ok'}")] += 1
        if r.late:
            self.counts[("late_queries", "")] += 1
        out.append(r)
