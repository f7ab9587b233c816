"""The drift report: reference vs live distribution of every monitored column, as a picture.

One subplot per model input (feature-spec order) and per model output: the reference histogram drawn
from the profile's quantile bins (density, so uneven bins compare fairly), the live window's values
over the union of both ranges, and the current PSI / JS distance / spread ratio / standardized mean
shift / missing share in the title. Columns inside an alert episode get a red frame and title; the
figure title names them. Rendering uses matplotlib's Agg canvas directly (no pyplot, no global
backend switch), so it is safe inside a worker or a test.

``bidder drift report`` either renders a monitor snapshot (``DriftMonitor.snapshot()`` as JSON,
``--snapshot FILE``, read by :func:`load_snapshot`) or runs the seeded offline demo (``--demo``: a
stationary stream, then an injected drift, through :func:`streams.harness.drift_demo.run_demo`) and
writes the PNG (and with ``--html`` a page with the picture and a statistics table). ``docs/drift-report.png``
is ``bidder drift report --demo --out docs/drift-report.png``.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bidder.monitoring.drift import STATISTICS, DriftMonitor
from bidder.monitoring.profile import FeatureProfile

__all__ = ["load_snapshot", "write_report"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
_ALERT = "#c0392b"
_REF = "#7f8c8d"
_LIVE = "#2e86c1"


def _fmt(v: float, spec: str) -> str:
    return "-" if math.isnan(v) else format(v, spec)


def _spread(edges: F64, frac: F64, grid: F64) -> F64:
    """Reference mass per ``grid`` cell, each reference bin's mass spread evenly over its width
    (a zero-width bin, a point mass, lands in the cell holding it)."""
    lo, hi = edges[:-1, None], edges[1:, None]
    width = hi - lo
    overlap = np.clip(np.minimum(hi, grid[None, 1:]) - np.maximum(lo, grid[None, :-1]), 0.0, None)
    share = np.where(width > 1e-12, overlap / np.maximum(width, 1e-12), 0.0)
    point = np.clip(np.searchsorted(grid, edges[:-1], side="right") - 1, 0, len(grid) - 2)
    share[np.arange(len(frac)), point] += np.where(width[:, 0] > 1e-12, 0.0, 1.0)
    out: F64 = frac @ share
    return out


def _draw(ax: Axes, ref: FeatureProfile, live: F32, title: str, alerting: bool) -> None:
    """Reference and live mass per cell of one common grid (fractions, so the two compare)."""
    edges = np.asarray(ref.edges, np.float64)
    frac = np.asarray(ref.fractions, np.float64)
    lo, hi = float(edges[0]), float(edges[-1])
    if len(live):
        lo, hi = min(lo, float(live.min())), max(hi, float(live.max()))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    # discrete columns keep their one-bin-per-value edges; continuous ones get 40 even cells
    grid = np.unique(np.concatenate([edges, [lo, hi]])) if len(frac) <= 3 else np.linspace(lo, hi, 41)
    ref_mass = _spread(edges, frac, grid)
    ax.stairs(ref_mass, grid, fill=True, color=_REF, alpha=0.45, label="reference")
    if len(live):
        counts = np.histogram(live, bins=grid)[0]
        ax.stairs(counts / len(live), grid, color=_LIVE, linewidth=1.4, label="live")
    ax.set_title(title, fontsize=7, color=_ALERT if alerting else "black")
    ax.tick_params(labelsize=6)
    if alerting:
        for spine in ax.spines.values():
            spine.set_edgecolor(_ALERT)
            spine.set_linewidth(2.0)


def write_report(
    monitor: DriftMonitor, path: Path | str, *, html_path: Path | str | None = None, title: str = ""
) -> Path:
    """Write the PNG grid for ``monitor``'s current window (and optionally an HTML page); returns the PNG."""
    path = Path(path)
    refs = (*monitor.references, *monitor.prediction_references)
    stats = monitor.statistics
    alerting = monitor.alerting
    alert_cols = sorted({name for name, _ in alerting})
    ncols = 5
    nrows = max(1, math.ceil(len(refs) / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows + 0.8), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ref in enumerate(refs):
        ax = axes[i // ncols][i % ncols]
        d = stats.get(ref.name)
        st = {s: (d.get(s) if d else math.nan) for s in STATISTICS}
        hot = sorted(s for n, s in alerting if n == ref.name)
        head = ref.name + (" [pred]" if i >= len(monitor.references) else "")
        if hot:
            head += "  ALERT: " + ",".join(hot)
        sub = (
            f"PSI {_fmt(st['psi'], '.3f')}  JS {_fmt(st['js'], '.3f')}  scale {_fmt(st['scale'], '.2f')}\n"
            f"mean {_fmt(st['mean'], '+.2f')} sd  missing {_fmt(st['missing'], '.1%')}"
        )
        _draw(ax, ref, monitor.live_values(ref.name), f"{head}\n{sub}", bool(hot))
    for j in range(len(refs), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    axes[0][0].legend(fontsize=6, loc="upper right")
    head = title or f"drift report, model {monitor.model_version or '?'}"
    alerts = ", ".join(alert_cols) if alert_cols else "none"
    fig.suptitle(
        f"{head}: {monitor.n_sampled:,} sampled of {monitor.n_seen:,} served rows; alerting: {alerts}",
        fontsize=11,
        color=_ALERT if alert_cols else "black",
    )
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    if html_path is not None:
        _write_html(Path(html_path), path, monitor, head)
    return path


def _write_html(out: Path, png: Path, monitor: DriftMonitor, head: str) -> None:
    img = base64.b64encode(png.read_bytes()).decode()
    rows = []
    for name, d in monitor.statistics.items():
        hot = sorted(s for n, s in monitor.alerting if n == name)
        cells = "".join(f"<td>{_fmt(d.get(s), '.4g')}</td>" for s in STATISTICS)
        style = ' style="background:#f5b7b1"' if hot else ""
        rows.append(f"<tr{style}><td>{html.escape(name)}</td>{cells}<td>{','.join(hot)}</td></tr>")
    header = "".join(f"<th>{s}</th>" for s in STATISTICS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"<!doctype html><meta charset=utf-8><title>{html.escape(head)}</title>"
        f"<h1>{html.escape(head)}</h1>"
        f"<table border=1 cellspacing=0><tr><th>column</th>{header}<th>alerting</th></tr>"
        + "".join(rows)
        + f"</table><p><img alt='drift report' src='data:image/png;base64,{img}'></p>\n"
    )


def load_snapshot(path: Path) -> DriftMonitor:
    """The monitor a ``DriftMonitor.snapshot()`` JSON file describes (its sampling seeded, for a report)."""
    return DriftMonitor.from_snapshot(orjson.loads(Path(path).read_bytes()), rng=np.random.default_rng(0))
