"""Object metrics on the object's own pixels (mask where a polygon or RLE exists, else its box),
computed inside the image pass from the image's shared planes: no second decode, no copies."""

from __future__ import annotations

import math

import cv2
import numpy as np
import orjson
from pycocotools import mask as mask_utils

from qm_dagster.geometry import parsed_rle
from qm_dagster.metrics import sums as K
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

    def _mask(self, segmentation: str | None) -> np.ndarray:
        shape = (self.y1 - self.y0, self.x1 - self.x0)
        if segmentation is None or 0 in shape:
            return np.full(shape, 255, np.uint8)
        seg = orjson.loads(segmentation)  # measured 7x faster than json on COCO polygons
        if isinstance(seg, list):
            mask = np.zeros(shape, np.uint8)
            polys = [np.rint(np.asarray(p, float)).astype(np.int32).reshape(-1, 2) for p in seg]
            cv2.fillPoly(mask, polys, 255, offset=(-self.x0, -self.y0))  # integer shift
            return mask
        full = mask_utils.decode(parsed_rle(seg, self.image.height, self.image.width))
        return np.ascontiguousarray(full[self.y0 : self.y1, self.x0 : self.x1]) * np.uint8(255)

    def roi(self, plane: np.ndarray) -> np.ndarray:
        return plane[self.y0 : self.y1, self.x0 : self.x1]

    def crop_rgb(self) -> np.ndarray:
        return np.ascontiguousarray(self.roi(self.image.bgr)[:, :, ::-1])

    @cached_property
    def sums(self) -> tuple[int, ...]:
        """Exact integer sums over the mask, in one fused pass (indices in ``sums``)."""
        if self.mask.size == 0:
            return (0,) * K.MASKED_SUMS
        from qm_dagster.metrics.kernels import masked_sums  # numba: only where pixels are measured

        image = self.image
        planes = (image.gray, image.laplacian, *image.bgr_planes, *image.hsv_planes)
        return masked_sums(*planes, self.mask, self.y0, self.x0)

    @property
    def pixels(self) -> int:
        """Pixels of the object (set in its mask)."""
        return self.sums[K.N]

    @cached_property
    def moments(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Means and variances of (gray, Laplacian, rg, yb) over the mask, from exact sums."""
        s = self.sums
        n = s[K.N]
        if n == 0:
            return (math.nan,) * 4, (math.nan,) * 4
        s_rg = s[K.S_R] - s[K.S_G]
        s_yb2 = s[K.S_R] + s[K.S_G] - 2 * s[K.S_B]  # yb2 = (R - B) + (G - B) = 2 yb
        q_yb2 = 2 * s[K.D_RB] + 2 * s[K.D_GB] - s[K.D_RG]  # since (R - B) - (G - B) = R - G
        means = (s[K.S_GRAY] / n, s[K.S_LAP] / n, s_rg / n, s_yb2 / 2 / n)
        variances = (
            variance(n, s[K.S_GRAY], s[K.Q_GRAY]),
            variance(n, s[K.S_LAP], s[K.Q_LAP]),
            variance(n, s_rg, s[K.D_RG]),
            variance(n, s_yb2, q_yb2) / 4,
        )
        return means, variances

    def share(self, index: int) -> float:
        """Share of the mask's pixels counted by sum ``index`` (``K.RED``, ``K.GREEN``, ...)."""
        n = self.sums[K.N]
        return self.sums[index] / n if n else math.nan


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
    outliers="log",
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
    return o.share(K.RED)


@metric("object", "Share of the object's pixels that are green", reads="view", value_range=(0, 1))
def object_green(o: ObjectView) -> float:
    return o.share(K.GREEN)


@metric("object", "Share of the object's pixels that are blue", reads="view", value_range=(0, 1))
def object_blue(o: ObjectView) -> float:
    return o.share(K.BLUE)
