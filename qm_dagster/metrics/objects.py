"""Object metrics on the object's own pixels (mask where a polygon or RLE exists, else its box),
computed inside the image pass from the image's shared planes: no second decode, no copies."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np

from qm_dagster.metrics.registry import metric
from qm_dagster.metrics.view import ImageView, cached_property, variance


class ObjectView:
    """One object of a decoded image: its box region of interest and its mask inside it."""

    def __init__(
        self, image: ImageView, bbox: tuple[float, float, float, float], segmentation: str | None
    ):
        x, y, w, h = bbox
        self.image = image
        self.x0 = min(max(math.floor(x), 0), image.width)
        self.y0 = min(max(math.floor(y), 0), image.height)
        self.x1 = min(max(math.ceil(x + w), self.x0), image.width)
        self.y1 = min(max(math.ceil(y + h), self.y0), image.height)
        self.mask = self._mask(segmentation)
        self.pixels = cv2.countNonZero(self.mask) if self.mask.size else 0

    def _mask(self, segmentation: str | None) -> np.ndarray:
        shape = (self.y1 - self.y0, self.x1 - self.x0)
        if segmentation is None or 0 in shape:
            return np.full(shape, 255, np.uint8)
        seg = json.loads(segmentation)
        if isinstance(seg, list):
            mask = np.zeros(shape, np.uint8)
            polys = [np.rint(np.asarray(p, float)).astype(np.int32).reshape(-1, 2) for p in seg]
            cv2.fillPoly(mask, polys, 255, offset=(-self.x0, -self.y0))  # integer shift
            return mask
        from qm_dagster.geometry import decode, rle

        full = decode(rle(segmentation, np.zeros(4), self.image.height, self.image.width))
        return (full[self.y0 : self.y1, self.x0 : self.x1] * 255).astype(np.uint8)

    def roi(self, plane: np.ndarray) -> np.ndarray:
        return plane[self.y0 : self.y1, self.x0 : self.x1]

    def crop_rgb(self) -> np.ndarray:
        return np.ascontiguousarray(self.roi(self.image.bgr)[:, :, ::-1])

    def _masked(self, plane: np.ndarray) -> np.ndarray:
        """The ROI of a 16-bit plane with zeros outside the mask. OpenCV's masked norms have no
        SIMD path for 16-bit data: a masked copy and two unmasked sums are measured 5x faster
        than two masked norms (5 vs 26 us on a 150x120 object), and exact after rounding."""
        out = np.zeros(self.mask.shape, plane.dtype)
        cv2.copyTo(self.roi(plane), self.mask, out)
        return out

    @cached_property
    def moments(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Means and variances of (gray, Laplacian, rg, yb) over the mask, from exact sums
        (each ROI sliced once: the per-call overhead is a third of an object's cost)."""
        n = self.pixels
        if n == 0:
            return (math.nan,) * 4, (math.nan,) * 4
        image, mask, l1, l2 = self.image, self.mask, cv2.NORM_L1, cv2.NORM_L2SQR
        gray = self.roi(image.gray)
        b, g, r = (self.roi(p) for p in image.bgr_planes)
        s_gray, q_gray = round(cv2.norm(gray, l1, mask)), round(cv2.norm(gray, l2, mask))
        lap = self._masked(image.laplacian)
        s_lap, q_lap = round(cv2.sumElems(lap)[0]), round(cv2.norm(lap, l2))
        sb, sg, sr = (round(cv2.norm(p, l1, mask)) for p in (b, g, r))
        d_rg = round(cv2.norm(r, g, l2, mask))
        d_rb = round(cv2.norm(r, b, l2, mask))
        d_gb = round(cv2.norm(g, b, l2, mask))
        s_yb2 = sr + sg - 2 * sb  # yb2 = (R - B) + (G - B) = 2 yb
        q_yb2 = 2 * d_rb + 2 * d_gb - d_rg  # since (R - B) - (G - B) = R - G
        means = (s_gray / n, s_lap / n, (sr - sg) / n, s_yb2 / 2 / n)
        variances = (
            variance(n, s_gray, q_gray),
            variance(n, s_lap, q_lap),
            variance(n, sr - sg, d_rg),
            variance(n, s_yb2, q_yb2) / 4,
        )
        return means, variances

    def hue_fraction(self, code: int) -> float:
        """Share of the mask's pixels in hue band ``code`` (1 red, 2 green, 3 blue)."""
        if self.pixels == 0:
            return math.nan
        plane = self.image.band_planes[code]
        return round(cv2.norm(self.roi(plane), cv2.NORM_L1, self.mask)) / 255 / self.pixels


GRAY, LAPLACIAN, RG, YB = range(4)


@metric("object", "Mean gray level / 255 inside the object", reads="view", value_range=(0, 1))
def object_brightness(o: ObjectView) -> float:
    return o.moments[0][GRAY] / 255.0


@metric(
    "object",
    "Standard deviation of gray levels / 255 inside the object",
    reads="view",
    value_range=(0, 0.5),
)
def object_contrast(o: ObjectView) -> float:
    return math.sqrt(o.moments[1][GRAY]) / 255.0


@metric(
    "object",
    "Variance of the image's Laplacian inside the object",
    reads="view",
    value_range=(0, None),
)
def object_sharpness(o: ObjectView) -> float:
    return float(o.moments[1][LAPLACIAN])


@metric(
    "object",
    "Hasler-Suesstrunk colourfulness of the object's pixels",
    reads="view",
    value_range=(0, None),
)
def object_colorfulness(o: ObjectView) -> float:
    mean, var = o.moments
    return math.sqrt(var[RG] + var[YB]) + 0.3 * math.hypot(mean[RG], mean[YB])


@metric(
    "object",
    "Share of the object's pixels that are red (as image `red`)",
    reads="view",
    value_range=(0, 1),
)
def object_red(o: ObjectView) -> float:
    return o.hue_fraction(1)


@metric("object", "Share of the object's pixels that are green", reads="view", value_range=(0, 1))
def object_green(o: ObjectView) -> float:
    return o.hue_fraction(2)


@metric("object", "Share of the object's pixels that are blue", reads="view", value_range=(0, 1))
def object_blue(o: ObjectView) -> float:
    return o.hue_fraction(3)
