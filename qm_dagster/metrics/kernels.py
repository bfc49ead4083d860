"""One fused pass over an object's mask that gathers every sum its pixel metrics need.

Our own kernel (numba) instead of OpenCV calls because it is measured faster: the object metrics
need 14 exact sums (pixels, gray and Laplacian sums and squares, channel sums, squared channel
differences, red/green/blue hue counts). As OpenCV calls that was ~17 masked passes and as many
Python calls per object, and most COCO objects are small, so call overhead dominated. On the 466
objects of coco-val2014-fake100: 13 ms in one pass vs 35-49 ms, exact (integer accumulators).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from qm_dagster.metrics.view import BLUE_HUES, GREEN_HUES, RED_HUES

# Indices into the tuple ``masked_sums`` returns.
N, S_GRAY, Q_GRAY, S_LAP, Q_LAP, S_B, S_G, S_R, D_RG, D_RB, D_GB, RED, GREEN, BLUE = range(14)


@njit(inline="always")
def _in_bands(hue, bands):  # pragma: no cover - compiled
    hit = False
    for lo, hi in bands:
        hit |= (hue >= lo) & (hue <= hi)
    return hit


@njit(cache=True, nogil=True, boundscheck=False)
def masked_sums(gray, lap, b, g, r, lit_hue, mask, y0, x0):  # pragma: no cover - compiled
    """Sums over the pixels where ``mask`` (an ROI at row ``y0``, column ``x0`` of the image
    planes) is non-zero: (count, sum and sum of squares of ``gray`` and ``lap``, sums of ``b``,
    ``g``, ``r``, sums of (r-g)^2, (r-b)^2, (g-b)^2, counts of red, green, blue hues). ``lit_hue``
    is the hue where a pixel is lit enough to have one, else 255 (``ImageView.lit_hue``).

    int64 accumulators: exact for any image OpenCV can hold."""
    h, w = mask.shape
    n = s_gray = q_gray = s_lap = q_lap = s_b = s_g = s_r = d_rg = d_rb = d_gb = 0
    red = green = blue = 0
    for y in range(h):
        yy = y + y0
        m_row = mask[y]
        gray_row = gray[yy, x0 : x0 + w]
        lap_row = lap[yy, x0 : x0 + w]
        b_row = b[yy, x0 : x0 + w]
        g_row = g[yy, x0 : x0 + w]
        r_row = r[yy, x0 : x0 + w]
        hue_row = lit_hue[yy, x0 : x0 + w]
        for x in range(w):
            m = np.int64(m_row[x] != 0)  # multiply instead of branch, so the loop vectorises
            v = np.int64(gray_row[x]) * m
            lv = np.int64(lap_row[x]) * m
            bv = np.int64(b_row[x]) * m
            gv = np.int64(g_row[x]) * m
            rv = np.int64(r_row[x]) * m
            hue = hue_row[x]
            n += m
            s_gray += v
            q_gray += v * v
            s_lap += lv
            q_lap += lv * lv
            s_b += bv
            s_g += gv
            s_r += rv
            d_rg += (rv - gv) * (rv - gv)
            d_rb += (rv - bv) * (rv - bv)
            d_gb += (gv - bv) * (gv - bv)
            red += m * _in_bands(hue, RED_HUES)
            green += m * _in_bands(hue, GREEN_HUES)
            blue += m * _in_bands(hue, BLUE_HUES)
    return (n, s_gray, q_gray, s_lap, q_lap, s_b, s_g, s_r, d_rg, d_rb, d_gb, red, green, blue)
