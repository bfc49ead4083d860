"""Object metrics on the object's own pixels (mask where a polygon or RLE exists, else its box),
computed inside the image pass from the image's shared planes: no second decode, no copies."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np

from qm_dagster.metrics.registry import metric
from qm_dagster.metrics.view import ImageView


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
            polys = [
                np.round(np.asarray(p, float).reshape(-1, 2) - (self.x0, self.y0)).astype(np.int32)
                for p in seg
            ]
            cv2.fillPoly(mask, polys, 255)
            return mask
        from qm_dagster.geometry import decode, rle

        full = decode(rle(segmentation, np.zeros(4), self.image.height, self.image.width))
        return (full[self.y0 : self.y1, self.x0 : self.x1] * 255).astype(np.uint8)

    def roi(self, plane: np.ndarray) -> np.ndarray:
        return plane[self.y0 : self.y1, self.x0 : self.x1]

    def crop_rgb(self) -> np.ndarray:
        return np.ascontiguousarray(self.roi(self.image.bgr)[:, :, ::-1])

    def masked_moments(self, plane: np.ndarray) -> tuple[float, float]:
        """Mean and variance of ``plane`` over the mask (NaN for an empty mask)."""
        if self.pixels == 0:
            return math.nan, math.nan
        mean, std = cv2.meanStdDev(self.roi(plane), mask=self.mask)
        return float(mean[0, 0]), float(std[0, 0]) ** 2

    def hue_fraction(self, *bands: tuple[int, int]) -> float:
        if self.pixels == 0:
            return math.nan
        hue = self.roi(self.image.lit_hue)
        count = sum(
            cv2.countNonZero(cv2.bitwise_and(cv2.inRange(hue, lo, hi), self.mask))
            for lo, hi in bands
        )
        return count / self.pixels


@metric("object", "Mean gray level / 255 inside the object", reads="view", value_range=(0, 1))
def object_brightness(o: ObjectView) -> float:
    return o.masked_moments(o.image.gray)[0] / 255.0


@metric(
    "object",
    "Standard deviation of gray levels / 255 inside the object",
    reads="view",
    value_range=(0, 0.5),
)
def object_contrast(o: ObjectView) -> float:
    return math.sqrt(o.masked_moments(o.image.gray)[1]) / 255.0


@metric(
    "object",
    "Variance of the image's Laplacian inside the object",
    reads="view",
    value_range=(0, None),
)
def object_sharpness(o: ObjectView) -> float:
    return o.masked_moments(o.image.laplacian)[1]


@metric(
    "object",
    "Hasler-Suesstrunk colourfulness of the object's pixels",
    reads="view",
    value_range=(0, None),
)
def object_colorfulness(o: ObjectView) -> float:
    rg, yb2 = o.image.opponent_planes
    mean_rg, var_rg = o.masked_moments(rg)
    mean_yb2, var_yb2 = o.masked_moments(yb2)
    return math.sqrt(var_rg + var_yb2 / 4) + 0.3 * math.hypot(mean_rg, mean_yb2 / 2)


@metric(
    "object",
    "Share of the object's pixels that are red (as image `red`)",
    reads="view",
    value_range=(0, 1),
)
def object_red(o: ObjectView) -> float:
    return o.hue_fraction((0, 10), (170, 179))


@metric("object", "Share of the object's pixels that are green", reads="view", value_range=(0, 1))
def object_green(o: ObjectView) -> float:
    return o.hue_fraction((35, 75))


@metric("object", "Share of the object's pixels that are blue", reads="view", value_range=(0, 1))
def object_blue(o: ObjectView) -> float:
    return o.hue_fraction((90, 130))
