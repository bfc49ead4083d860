"""The thumbnail every embedding, hash and stored thumbnail starts from: the exact area average
of the image, checked against weights built here in float64 and against OpenCV's INTER_AREA."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from qm_dagster.embeddings import THUMB, thumbnail


def area_matrix(n: int, out: int) -> np.ndarray:
    """Row i: each source pixel's overlap with [i*n/out, (i+1)*n/out), over the cell's width."""
    weights = np.zeros((out, n))
    for i in range(out):
        lo, hi = Fraction(i * n, out), Fraction((i + 1) * n, out)
        for j in range(n):
            overlap = min(hi, j + 1) - max(lo, j)
            if overlap > 0:
                weights[i, j] = float(overlap / (hi - lo))
    return weights


def exact_area(image: np.ndarray, size: int) -> np.ndarray:
    rows, cols = area_matrix(image.shape[0], size), area_matrix(image.shape[1], size)
    return np.stack([rows @ image[..., c].astype(float) @ cols.T for c in range(3)], axis=-1)


@pytest.mark.parametrize("shape", [(480, 640), (375, 500), (64, 64), (65, 1001), (128, 192)])
def test_thumbnail_is_the_rounded_area_average(shape):
    rng = np.random.default_rng(shape[0])
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), (0, 0), 3)
    for image in (rng.integers(0, 256, (*shape, 3), dtype=np.uint8), smooth):
        ours, exact = thumbnail(image).astype(float), exact_area(image, THUMB)
        assert ours.shape == (THUMB, THUMB, 3)
        assert np.abs(ours - exact).max() <= 0.5 + 1e-3
        # OpenCV rounds the same averages; they part only where an average is (nearly) a tie
        opencv = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
        assert np.abs(ours - opencv).max() <= 1
        parted = exact[ours != opencv]
        assert np.abs(parted - np.floor(parted) - 0.5).max(initial=0) < 0.01


def test_thumbnail_of_a_crop_view_and_of_a_small_image():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    crop = image[10:210, 30:330]  # a strided view, as object crops are
    assert np.array_equal(thumbnail(crop), thumbnail(crop.copy()))
    small = image[:40, :90]  # a side under the thumbnail: OpenCV's INTER_AREA enlarges it
    expected = cv2.resize(small, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    assert np.array_equal(thumbnail(small), expected)
