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


def _png(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
