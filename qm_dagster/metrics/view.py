"""One decoded image and the planes metrics share, each computed at most once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np


@dataclass(frozen=True)
class Header:
    """What an image's header says, enough for size metrics without decoding."""

    width: int
    height: int


class ImageView:
    """A decoded image (OpenCV BGR order internally) with lazily cached derived planes.

    BGR->GRAY and BGR->HSV give exactly OpenCV's RGB->GRAY / RGB->HSV of the RGB image, so
    metrics defined on RGB read these planes without an extra channel swap.
    """

    def __init__(self, bgr: np.ndarray):
        if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {bgr.shape} {bgr.dtype}")
        self.bgr = bgr

    @classmethod
    def from_rgb(cls, rgb: np.ndarray) -> ImageView:
        return cls(np.ascontiguousarray(rgb[:, :, ::-1]))

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @cached_property
    def rgb(self) -> np.ndarray:
        """RGB uint8 array, what custom metrics receive; made only when one asks for it."""
        return cv2.cvtColor(self.bgr, cv2.COLOR_BGR2RGB)

    @cached_property
    def gray(self) -> np.ndarray:
        return cv2.cvtColor(self.bgr, cv2.COLOR_BGR2GRAY)

    @cached_property
    def hsv(self) -> np.ndarray:
        return cv2.cvtColor(self.bgr, cv2.COLOR_BGR2HSV)

    @cached_property
    def gray_hist(self) -> np.ndarray:
        """256-bin histogram of ``gray`` as float64 counts."""
        return cv2.calcHist([self.gray], [0], None, [256], [0, 256]).ravel().astype(np.float64)

    @cached_property
    def laplacian_variance(self) -> float:
        """Variance of ``cv2.Laplacian(gray, CV_64F)``, shared by sharpness and blur."""
        _, std = cv2.meanStdDev(cv2.Laplacian(self.gray, cv2.CV_64F))
        return float(std[0, 0] ** 2)

    def hsv_band_fraction(self, *bands: tuple[int, int]) -> float:
        """Share of pixels whose hue lies in any of ``bands`` with S >= 50 and V >= 40."""
        count = 0
        for lo, hi in bands:
            mask = cv2.inRange(self.hsv, (lo, 50, 40), (hi, 255, 255))
            count += cv2.countNonZero(mask)
        return count / self.pixels
