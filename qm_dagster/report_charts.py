"""The report's charts, drawn by matplotlib (Agg, no pyplot state, so safe on threads): SVG with
text as text, readable axes (compact tick labels, a log axis for values spanning decades) and
bucket ranges spelled out. Returned as data URLs for ``<img>`` tags."""

from __future__ import annotations

import base64
import io
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # matplotlib is imported where a chart is drawn: with the fork server up
    from matplotlib.figure import Figure  # (``ChartBatch``), only its workers, which preload it

CURRENT, REFERENCE = "#3b78b5", "#d0453a"
WIDE_RANGE = 1e3  # values spanning more than this factor (all > 0) get a log axis


def compact(value: float, _pos: object = None) -> str:
    """A tick label of at most ~5 characters: 0.25, 1.3k, 2.1M, 1e-05."""
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e3:  # .3g would write 1000 as 1e+03
        return f"{value / 1e3:.3g}k"
    if a < 1e-3:
        return f"{value:.0e}"
    return f"{value:.3g}"


def _figure(
    width: float, height: float, left: float = 0.13, bottom: float = 0.5, top: float = 0.1
) -> Figure:
    """A figure with fixed margins (``left`` a share of the width, ``bottom`` and ``top``
    inches): a layout engine costs ~40% of a chart's time and the labels here are of known
    size."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(left=left, right=0.97, top=1 - top / height, bottom=bottom / height)
    return fig


def _data_url(fig: Figure) -> str:
    """The figure as an SVG data URL, its text as SVG text (the browser's font): glyphs as
    paths, matplotlib's default, took 80% of a chart's time and most of its bytes."""
    import matplotlib

    buf = io.BytesIO()
    # a fixed salt: the same chart is the same bytes, wherever it was drawn
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "qm-dagster"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _finite(values: np.ndarray | None) -> np.ndarray:
    if values is None:
        return np.empty(0)
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def histogram(
    values: np.ndarray, name: str, reference: np.ndarray | None = None, unit: str = "images"
) -> str:
    """This version's values as filled bars and the reference's (scaled to this version's
    count) as an outline, on shared bins; a log axis when the values span decades."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    current, ref = _finite(values), _finite(reference)
    fig = _figure(4.4, 2.4)
    ax = fig.add_subplot()
    both = np.concatenate([current, ref])
    if both.size == 0:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _data_url(fig)
    lo, hi = float(both.min()), float(both.max())
    log = lo > 0 and hi / lo > WIDE_RANGE
    if log:
        bins = np.geomspace(lo, hi, 31)
        ax.set_xscale("log")
    else:
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
    counts, _ = np.histogram(current, bins=bins)
    # stairs: one artist per series (ax.hist draws a patch per bar, 3x slower)
    ax.stairs(counts, bins, fill=True, color=CURRENT, label=f"this version (n={current.size})")
    if ref.size:
        scaled = np.histogram(ref, bins=bins)[0] * (
            current.size / ref.size if current.size else 1.0
        )
        ax.stairs(
            scaled, bins, color=REFERENCE, linewidth=1.4, label=f"reference (n={ref.size}, scaled)"
        )
        ax.legend(fontsize=7, frameon=False, loc="upper right")
    ax.xaxis.set_major_formatter(FuncFormatter(compact))
    if not log:
        ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
    ax.set_xlabel(name + (" (log scale)" if log else ""), fontsize=8)
    ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return _data_url(fig)


def bucket_label(lo: float, hi: float) -> str:
    """A bucket's value range, e.g. ``0.12-0.35`` (an en dash)."""
    if not (np.isfinite(lo) or np.isfinite(hi)):
        return "all"
    return f"{compact(lo)}\u2013{compact(hi)}"


def sliced(frame: pd.DataFrame, metric: str, stat: str = "AP50") -> str:
    """``stat`` of each model in each bucket of ``metric``, one bar group per bucket, labelled by
    the bucket's value range and image count; a bucket without ground truth is marked, not
    drawn at -1; each model's whole-version value as a dashed line."""
    rows = frame[frame.metric == metric].sort_values(["bucket", "model"])
    models = list(dict.fromkeys(rows.model))
    buckets = list(dict.fromkeys(rows.bucket))
    height = 0.6 + 0.32 * max(3, len(buckets) * max(1, len(models)))
    legend = 0.3 if len(models) > 1 else 0.0
    fig = _figure(4.4, height + legend, left=0.24, bottom=0.45, top=0.1 + legend)
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(models))
    colours = [CURRENT, "#e08a1e", "#5aa05a", "#8c5db5", REFERENCE]
    labels = []
    for b, bucket in enumerate(buckets):
        first = rows[rows.bucket == bucket].iloc[0]
        labels.append(f"{bucket_label(first.lo, first.hi)}\n{int(first.n_images)} images")
        for m, model in enumerate(models):
            hit = rows[(rows.bucket == bucket) & (rows.model == model)]
            y = b + (m - (len(models) - 1) / 2) * height
            value = float(hit[stat].iloc[0]) if len(hit) else float("nan")
            if value >= 0:
                ax.barh(y, value, height=height * 0.9, color=colours[m % len(colours)])
                ax.text(value + 0.01, y, f"{value:.2f}", va="center", fontsize=7)
            else:
                ax.text(0.01, y, "no ground truth", va="center", fontsize=7, color="#777")
    overall = frame[(frame.metric == "all") & frame.model.isin(models)]
    for m, model in enumerate(models):
        whole = overall[overall.model == model][stat]
        if len(whole) and float(whole.iloc[0]) >= 0:
            ax.axvline(
                float(whole.iloc[0]),
                color=colours[m % len(colours)],
                linestyle="--",
                linewidth=1,
                label=str(model),
            )
    ax.set_yticks(range(len(buckets)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"{stat} by {metric} (dashed: the whole version)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    if len(models) > 1:  # above the axes: inside, it would cover the bars' values
        ax.legend(fontsize=7, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2)
    ax.spines[["top", "right"]].set_visible(False)
    return _data_url(fig)


class ChartBatch:
    """Charts asked for while the report's HTML is built, drawn together by ``fill``: a chart
    costs ~33 ms of matplotlib (19-35 a report, most of the report's time), so with ``workers``
    > 1 and this process's fork server already up (``qm materialize`` starts it, matplotlib
    preloaded) they are drawn on that many processes; otherwise here, one after the other (a
    step process of its own would pay a server's start-up, ~1 s, for it)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._jobs: list[tuple[Callable[..., str], tuple, dict]] = []
        # unguessable, so no dataset text can pass for a placeholder
        self._token = secrets.token_hex(8)
        self._placeholder = re.compile(f"\x00chart-{self._token}-(\\d+)\x00")

    def histogram(self, *args, **kwargs) -> str:
        """A placeholder for ``histogram(*args, **kwargs)``, replaced by ``fill``."""
        return self._add(histogram, args, kwargs)

    def sliced(self, *args, **kwargs) -> str:
        """A placeholder for ``sliced(*args, **kwargs)``, replaced by ``fill``."""
        return self._add(sliced, args, kwargs)

    def _add(self, fn: Callable[..., str], args: tuple, kwargs: dict) -> str:
        self._jobs.append((fn, args, kwargs))
        return f"\x00chart-{self._token}-{len(self._jobs) - 1}\x00"

    def fill(self, text: str) -> str:
        """``text`` with every placeholder replaced by its chart's data URL."""
        urls = self._draw()
        return self._placeholder.sub(lambda m: urls[int(m.group(1))], text)

    def _draw(self) -> list[str]:
        from qm_dagster.passes import pool

        if self.workers > 1 and len(self._jobs) > 1 and pool.server_started():
            with pool.process_pool(min(self.workers, len(self._jobs))) as workers:
                return list(workers.map(_draw_one, self._jobs))
        return [_draw_one(job) for job in self._jobs]


def _draw_one(job: tuple[Callable[..., str], tuple, dict]) -> str:
    fn, args, kwargs = job
    return fn(*args, **kwargs)
