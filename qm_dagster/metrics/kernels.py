"""Fused pixel passes, compiled by numba, for the sums that several metrics share.

Our own kernels instead of OpenCV calls because they are measured faster, and exact (integer
accumulators):

- ``masked_sums``: the 14 sums of an object's pixel metrics in one pass over its mask. As OpenCV
  calls that was ~17 masked passes and as many Python calls per object; most COCO objects are
  small, so call overhead dominated. On the 466 objects of coco-val2014-fake100: 13 ms instead
  of 35-49 ms.
- ``hue_sums``: red/green/blue hue counts and the saturation sum of an image from its H, S, V
  planes in one vectorised pass: 48 us instead of 220 us per image as 9 OpenCV passes
  (S and V floors, band masks, counts) on ../shared/data's photos.
- ``laplacian_sums``: the sum and sum of squares of an image's 4-neighbour Laplacian, straight
  from the gray plane: 0.13 ms per 640x480 photo instead of 0.20 ms for ``cv2.Laplacian`` into
  a 16-bit plane plus ``sumElems`` and ``norm`` over it (images without objects never need
  the plane itself).
- ``area_shrink``: the area-averaged thumbnail every image's embedding, hash and stored
  thumbnail come from. OpenCV's INTER_AREA takes a generic weighted path whenever the scale is
  not an integer (480 -> 64 rows is 7.5): 0.80 ms per 640x480 photo; this separable pass takes
  0.32 ms. Values are the exact area averages rounded; OpenCV's float weights differ from them
  by one level on ~0.1% of pixels.

Importing this module compiles the kernels, or loads them from numba's cache (about 0.6 s), so
it is imported only where pixels are measured; the image pass's fork server preloads it and its
workers inherit the compiled code.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from qm_dagster.metrics.sums import MASKED_SUMS

# Constants of the kernels live in this file: numba's cache is invalidated only when this file
# changes, and compiled code keeps the values globals had at compile time.
SAT_FLOOR, VAL_FLOOR = 50, 40  # a pixel has a colour (hue) only at S >= 50 and V >= 40
# Inclusive OpenCV hue ranges (0-179) of the colour metrics, image and object level alike.
RED_HUES = ((0, 10), (170, 179))
GREEN_HUES = ((35, 75),)
BLUE_HUES = ((90, 130),)

PLANE = "uint8[:, ::1]"


@njit(inline="always")
def _in_bands(hue, bands):  # pragma: no cover - compiled
    hit = False
    for lo, hi in bands:
        hit |= (hue >= lo) & (hue <= hi)
    return hit


@njit(f"UniTuple(int64, 4)({PLANE}, {PLANE}, {PLANE})", cache=True, nogil=True)
def hue_sums(hue, sat, val):  # pragma: no cover - compiled
    """(red, green, blue pixel counts, sum of S) of an image's H, S, V planes (``sums.IMAGE_*``).

    Row sums are int32 (twice as many SIMD lanes): exact, since OpenCV decodes at most 2**20
    columns and 255 * 2**20 < 2**31."""
    h, w = hue.shape
    red = green = blue = s_sum = 0
    for y in range(h):
        hue_row, sat_row, val_row = hue[y], sat[y], val[y]
        row_red = row_green = row_blue = row_sat = np.int32(0)
        for x in range(w):
            hx, sx = hue_row[x], sat_row[x]
            lit = (sx >= SAT_FLOOR) & (val_row[x] >= VAL_FLOOR)
            row_red = np.int32(row_red + (lit & _in_bands(hx, RED_HUES)))
            row_green = np.int32(row_green + (lit & _in_bands(hx, GREEN_HUES)))
            row_blue = np.int32(row_blue + (lit & _in_bands(hx, BLUE_HUES)))
            row_sat = np.int32(row_sat + sx)
        red += row_red
        green += row_green
        blue += row_blue
        s_sum += row_sat
    return red, green, blue, s_sum


@njit(
    f"UniTuple(int64, {MASKED_SUMS})({PLANE}, int16[:, ::1], {', '.join([PLANE] * 7)}, int64, int64)",
    cache=True,
    nogil=True,
)
def masked_sums(gray, lap, b, g, r, hue, sat, val, mask, y0, x0):  # pragma: no cover - compiled
    """Sums over the pixels where ``mask`` (an ROI at row ``y0``, column ``x0`` of the image
    planes) is non-zero: (count, sum and sum of squares of ``gray`` and ``lap``, sums of ``b``,
    ``g``, ``r``, sums of (r-g)^2, (r-b)^2, (g-b)^2, counts of red, green, blue hues); indices
    in ``sums``.

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
        hue_row = hue[yy, x0 : x0 + w]
        sat_row = sat[yy, x0 : x0 + w]
        val_row = val[yy, x0 : x0 + w]
        for x in range(w):
            m = np.int64(m_row[x] != 0)  # multiply instead of branch, so the loop vectorises
            v = np.int64(gray_row[x]) * m
            lv = np.int64(lap_row[x]) * m
            bv = np.int64(b_row[x]) * m
            gv = np.int64(g_row[x]) * m
            rv = np.int64(r_row[x]) * m
            hx = hue_row[x]
            lit = m * ((sat_row[x] >= SAT_FLOOR) & (val_row[x] >= VAL_FLOOR))
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
            red += lit * _in_bands(hx, RED_HUES)
            green += lit * _in_bands(hx, GREEN_HUES)
            blue += lit * _in_bands(hx, BLUE_HUES)
    return (n, s_gray, q_gray, s_lap, q_lap, s_b, s_g, s_r, d_rg, d_rb, d_gb, red, green, blue)


@njit(inline="always")
def _reflect(i, n):  # pragma: no cover - compiled
    """OpenCV's BORDER_REFLECT_101 index for ``-1 <= i <= n`` (a 1-pixel side reflects to 0)."""
    if n == 1:
        return 0
    if i < 0:
        return 1
    if i >= n:
        return n - 2
    return i


@njit(f"UniTuple(int64, 2)({PLANE})", cache=True, nogil=True)
def laplacian_sums(gray):  # pragma: no cover - compiled
    """(sum, sum of squares) of ``cv2.Laplacian(gray, ksize=1)``: up + down + left + right -
    4 * centre, borders reflected as OpenCV's default (BORDER_REFLECT_101). Exact: a value
    fits int32 (|value| <= 1020) and the sums are int64."""
    h, w = gray.shape
    total = squares = 0
    for y in range(h):
        up, row, down = gray[_reflect(y - 1, h)], gray[y], gray[_reflect(y + 1, h)]
        for x in range(0, w, max(1, w - 1)):  # the two border columns (one if w == 1)
            v = (
                np.int64(up[x])
                + np.int64(down[x])
                + np.int64(row[_reflect(x - 1, w)])
                + np.int64(row[_reflect(x + 1, w)])
                - 4 * np.int64(row[x])
            )
            total += v
            squares += v * v
        row_total = row_squares = np.int64(0)
        for x in range(1, w - 1):  # contiguous and branch-free: vectorised
            v = (
                np.int32(up[x])
                + np.int32(down[x])
                + np.int32(row[x - 1])
                + np.int32(row[x + 1])
                - 4 * np.int32(row[x])
            )
            row_total += v
            row_squares += np.int64(v * v)
        total += row_total
        squares += row_squares
    return total, squares


@njit("Tuple((int64[::1], float64[::1], float64[::1]))(int64, int64)", cache=True, nogil=True)
def _area_weights(n, out):  # pragma: no cover - compiled
    """For each of ``n`` source pixels shrunk to ``out`` cells (``n >= out``): its cell and its
    weights in that cell and the next. Cell ``i`` spans source [i*n/out, (i+1)*n/out); the
    boundaries are compared in integers, so full and split pixels are told apart exactly."""
    cell = np.empty(n, np.int64)
    here = np.empty(n, np.float64)
    there = np.zeros(n, np.float64)
    for j in range(n):
        i = (j * out) // n
        cell[j] = i
        if (j + 1) * out <= (i + 1) * n:
            here[j] = out / n
        else:
            here[j] = ((i + 1) * n - j * out) / n
            there[j] = ((j + 1) * out - (i + 1) * n) / n
    return cell, here, there


@njit("uint8[:, :, ::1](uint8[:, :, ::1], int64, int64)", cache=True, nogil=True)
def area_shrink(image, out_h, out_w):  # pragma: no cover - compiled
    """``image`` (H x W x C, H >= out_h, W >= out_w) averaged over ``out_h`` x ``out_w`` equal
    cells, each source pixel weighted by its overlap with the cell, rounded half to even."""
    h, w, c = image.shape
    row_cell, row_here, row_there = _area_weights(h, out_h)
    col_cell, col_here, col_there = _area_weights(w, out_w)
    rows = np.zeros((out_h + 1, w * c), np.float32)  # row out_h takes zero-weight spill
    flat = image.reshape(h, w * c)
    # A pixel wholly inside a cell adds nothing to the next: the second multiply-add is made
    # only for split pixels (same sums: 0.41 -> 0.31 ms for a 640x480 image)
    for y in range(h):  # rows first: contiguous, vectorised float32 multiply-adds
        a, b = np.float32(row_here[y]), np.float32(row_there[y])
        src, first = flat[y], rows[row_cell[y]]
        for k in range(w * c):
            first[k] += a * np.float32(src[k])
        if row_there[y] != 0.0:
            second = rows[row_cell[y] + 1]
            for k in range(w * c):
                second[k] += b * np.float32(src[k])
    cells = np.zeros((out_h, out_w + 1, c), np.float64)
    for i in range(out_h):
        row, cell = rows[i], cells[i]
        for x in range(w):
            j, a, b = col_cell[x], col_here[x], col_there[x]
            for ch in range(c):
                cell[j, ch] += a * row[x * c + ch]
            if b != 0.0:
                for ch in range(c):
                    cell[j + 1, ch] += b * row[x * c + ch]
    result = np.empty((out_h, out_w, c), np.uint8)
    for i in range(out_h):
        for j in range(out_w):
            for ch in range(c):
                result[i, j, ch] = min(255.0, max(0.0, np.rint(cells[i, j, ch])))
    return result
