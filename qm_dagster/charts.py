"""Small PNG charts drawn with OpenCV, for Dagster metadata (markdown data URLs) and reports."""

from __future__ import annotations

import base64

import cv2
import numpy as np


def histogram_png(
    values: np.ndarray,
    bins: int = 30,
    width: int = 360,
    height: int = 140,
    reference: np.ndarray | None = None,
) -> bytes:
    """A bar histogram of the finite ``values`` with min/max labels, as PNG bytes; with
    ``reference``, its histogram (same bins, as shares) is drawn as a red outline on top."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    ref = None if reference is None else np.asarray(reference, np.float64)
    ref = None if ref is None else ref[np.isfinite(ref)]
    canvas = np.full((height, width, 3), 255, np.uint8)
    if finite.size == 0:
        cv2.putText(
            canvas,
            "no values",
            (10, height // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (80, 80, 80),
            1,
            cv2.LINE_AA,
        )
        return _png(canvas)
    both = finite if ref is None or ref.size == 0 else np.concatenate([finite, ref])
    lo, hi = float(both.min()), float(both.max())
    counts, _ = np.histogram(finite, bins=bins, range=(lo, hi if hi > lo else lo + 1))
    ref_counts = None
    if ref is not None and ref.size:
        ref_counts, _ = np.histogram(ref, bins=bins, range=(lo, hi if hi > lo else lo + 1))
        ref_counts = ref_counts / ref.size * finite.size
    plot_h, margin = height - 24, 4
    bar_w = (width - 2 * margin) / bins
    top = max(counts.max(), 0 if ref_counts is None else ref_counts.max()) or 1
    for i, c in enumerate(counts):
        x0 = int(margin + i * bar_w)
        x1 = max(x0 + 1, int(margin + (i + 1) * bar_w) - 1)
        y0 = int(plot_h - (plot_h - 6) * c / top)
        cv2.rectangle(canvas, (x0, y0), (x1, plot_h), (190, 120, 40), -1)
    if ref_counts is not None:
        for i, c in enumerate(ref_counts):
            x0 = int(margin + i * bar_w)
            x1 = max(x0 + 1, int(margin + (i + 1) * bar_w) - 1)
            y0 = int(plot_h - (plot_h - 6) * c / top)
            cv2.rectangle(canvas, (x0, y0), (x1, plot_h), (40, 40, 220), 1)
    cv2.line(canvas, (0, plot_h), (width, plot_h), (60, 60, 60), 1)
    font, scale, color = cv2.FONT_HERSHEY_SIMPLEX, 0.4, (40, 40, 40)
    cv2.putText(canvas, f"{lo:.4g}", (margin, height - 6), font, scale, color, 1, cv2.LINE_AA)
    label = f"{hi:.4g}"
    (tw, _), _ = cv2.getTextSize(label, font, scale, 1)
    cv2.putText(
        canvas, label, (width - tw - margin, height - 6), font, scale, color, 1, cv2.LINE_AA
    )
    cv2.putText(
        canvas,
        f"n={finite.size}",
        (width // 2 - 20, height - 6),
        font,
        scale,
        color,
        1,
        cv2.LINE_AA,
    )
    return _png(canvas)


PALETTE = ((190, 120, 40), (40, 140, 230), (60, 170, 60), (40, 40, 220), (160, 80, 160))


def bars_png(
    series: dict[str, list[float]],
    labels: list[str],
    top: float = 1.0,
    width: int = 360,
    height: int = 150,
) -> bytes:
    """Grouped bars: one group per label, one bar per series (e.g. AP50 per bucket per model),
    scaled to ``top``; NaN bars are left out. Series names are drawn as a legend."""
    canvas = np.full((height, width, 3), 255, np.uint8)
    font, scale, ink = cv2.FONT_HERSHEY_SIMPLEX, 0.38, (40, 40, 40)
    plot_h, margin, legend_h = height - 22, 4, 14 * len(series)
    groups = max(1, len(labels))
    group_w = (width - 2 * margin) / groups
    bar_w = max(1.0, (group_w - 4) / max(1, len(series)))
    for s, (name, values) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        for g, value in enumerate(values[:groups]):
            if not np.isfinite(value):
                continue
            x0 = int(margin + g * group_w + 2 + s * bar_w)
            x1 = max(x0 + 1, int(x0 + bar_w) - 1)
            y0 = int(plot_h - (plot_h - legend_h - 4) * min(max(value / top, 0.0), 1.0))
            cv2.rectangle(canvas, (x0, y0), (x1, plot_h), color, -1)
        cv2.rectangle(canvas, (width - 110, 4 + 14 * s), (width - 100, 12 + 14 * s), color, -1)
        cv2.putText(canvas, name[:16], (width - 96, 12 + 14 * s), font, scale, ink, 1, cv2.LINE_AA)
    cv2.line(canvas, (0, plot_h), (width, plot_h), (60, 60, 60), 1)
    for g, label in enumerate(labels):
        x = int(margin + g * group_w + 2)
        cv2.putText(canvas, label[:10], (x, height - 6), font, scale, ink, 1, cv2.LINE_AA)
    return _png(canvas)


def hbars_png(
    items: list[tuple[str, float, bool]], top: float = 1.0, width: int = 420, row: int = 16
) -> bytes:
    """Horizontal bars, one per ``(label, value, highlight)`` (e.g. the KS statistic per metric,
    highlighted where the verdict is drift), scaled to ``top``, the value printed at the end."""
    height = max(row, row * len(items)) + 4
    canvas = np.full((height, width, 3), 255, np.uint8)
    font, scale, ink = cv2.FONT_HERSHEY_SIMPLEX, 0.38, (40, 40, 40)
    label_w, value_w = 150, 44
    span = width - label_w - value_w
    for i, (label, value, highlight) in enumerate(items):
        y = 2 + i * row
        cv2.putText(canvas, label[:24], (2, y + row - 5), font, scale, ink, 1, cv2.LINE_AA)
        if not np.isfinite(value):
            continue
        x1 = label_w + max(1, int(span * min(max(value / top, 0.0), 1.0)))
        color = (40, 40, 220) if highlight else (190, 120, 40)
        cv2.rectangle(canvas, (label_w, y + 2), (x1, y + row - 3), color, -1)
        cv2.putText(canvas, f"{value:.3g}", (x1 + 3, y + row - 5), font, scale, ink, 1, cv2.LINE_AA)
    return _png(canvas)


def sliced_chart(frame, metric: str, stat: str = "AP50") -> bytes:
    """``stat`` per bucket of ``metric`` for each model (box evaluation), from a
    sliced-evaluation table."""
    rows = frame[frame.metric == metric].sort_values("bucket")
    if "iou_type" in rows:
        rows = rows[rows.iou_type == "bbox"]
    buckets = [b for b in dict.fromkeys(rows.bucket.astype(str)) if b != "all"]
    series = {
        str(model): [
            float(group[group.bucket.astype(str) == b][stat].iloc[0])
            if (group.bucket.astype(str) == b).any()
            else float("nan")
            for b in buckets
        ]
        for model, group in rows.groupby("model")
    }
    return bars_png(series, [f"q{b}" if b.isdigit() else b for b in buckets])


def _png(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
