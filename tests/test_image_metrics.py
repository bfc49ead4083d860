"""Each built-in image metric against values worked out by hand and independent numpy/scipy code."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import stats

from qm_dagster.metrics import get, load_metrics
from qm_dagster.metrics.image import BLUR_HALF_SHARPNESS
from qm_dagster.metrics.view import Header, ImageView
from tests.conftest import shared
from tests.images import checkerboard, solid

load_metrics()
PIXEL_METRICS = [
    "brightness",
    "contrast",
    "sharpness",
    "blur",
    "colorfulness",
    "red",
    "green",
    "blue",
    "saturation",
    "entropy",
    "clipping",
]


def value(name: str, rgb: np.ndarray) -> float:
    return get(name).fn(ImageView.from_rgb(rgb))


def test_black_image_by_hand():
    black = solid((0, 0, 0))
    expected = {
        "brightness": 0,
        "contrast": 0,
        "sharpness": 0,
        "blur": 1,
        "colorfulness": 0,
        "red": 0,
        "green": 0,
        "blue": 0,
        "saturation": 0,
        "entropy": 0,
        "clipping": 1,
    }
    assert {m: value(m, black) for m in PIXEL_METRICS} == pytest.approx(expected, abs=1e-12)


def test_checkerboard_by_hand():
    board = checkerboard()
    # every 4-neighbour has the opposite colour (also across the reflect-101 border), so the
    # Laplacian is -1020 on white and +1020 on black: variance 1020^2
    assert value("sharpness", board) == pytest.approx(1020.0**2, rel=1e-12)
    assert value("blur", board) == pytest.approx(
        BLUR_HALF_SHARPNESS / (BLUR_HALF_SHARPNESS + 1020.0**2)
    )
    assert value("brightness", board) == pytest.approx(0.5)
    assert value("contrast", board) == pytest.approx(0.5)
    assert value("entropy", board) == pytest.approx(1.0)
    assert value("clipping", board) == pytest.approx(1.0)
    assert value("saturation", board) == 0.0


def test_pure_red_by_hand():
    red = solid((255, 0, 0))
    assert value("red", red) == 1.0
    assert value("green", red) == 0.0
    assert value("blue", red) == 0.0
    assert value("saturation", red) == 1.0
    # OpenCV gray = 0.299 R + 0.587 G + 0.114 B, rounded: 76
    assert value("brightness", red) == pytest.approx(76 / 255)
    assert value("entropy", red) == 0.0
    # rg = 255, yb = 127.5 everywhere: no spread, only the mean term
    assert value("colorfulness", red) == pytest.approx(0.3 * math.hypot(255, 127.5))


@pytest.mark.parametrize(
    ("rgb", "band"), [((0, 255, 0), "green"), ((0, 0, 255), "blue"), ((255, 0, 0), "red")]
)
def test_hue_bands_and_their_saturation_value_floors(rgb, band):
    assert value(band, solid(rgb)) == 1.0
    dark = tuple(int(c * 30 / 255) for c in rgb)  # V = 30 < 40
    assert value(band, solid(dark)) == 0.0
    pale = tuple(max(c, 230) for c in rgb)  # S = 255*(255-230)/255 = 25 < 50
    assert value(band, solid(pale)) == 0.0


def test_colour_counts_on_every_rgb_colour():
    """Every one of the 2**24 RGB colours once: the fused hue kernel's band counts, S and V floors
    and saturation sum against numpy on OpenCV's own HSV planes (every band edge is hit)."""
    codes = np.arange(2**24, dtype=np.uint32).reshape(4096, 4096)
    rgb = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1)
    rgb = rgb.astype(np.uint8)
    view = ImageView.from_rgb(rgb)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    lit = (s >= 50) & (v >= 40)
    expected = {
        "red": np.count_nonzero(lit & ((h <= 10) | ((h >= 170) & (h <= 179)))),
        "green": np.count_nonzero(lit & (h >= 35) & (h <= 75)),
        "blue": np.count_nonzero(lit & (h >= 90) & (h <= 130)),
    }
    for band, count in expected.items():
        assert get(band).fn(view) == count / 2**24, band
    assert get("saturation").fn(view) == s.sum(dtype=np.int64) / 2**24 / 255


def test_half_red_half_blue():
    img = solid((255, 0, 0), h=10, w=10)
    img[:, 5:] = (0, 0, 255)
    assert value("red", img) == 0.5
    assert value("blue", img) == 0.5


def test_header_metrics():
    h = Header(width=640, height=480)
    assert get("width").fn(h) == 640
    assert get("height").fn(h) == 480
    assert get("aspect_ratio").fn(h) == pytest.approx(4 / 3)
    assert get("area").fn(h) == 640 * 480


def _numpy_laplacian(gray: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian with reflect-101 borders (numpy's 'reflect'), as cv2.Laplacian ksize=1."""
    p = np.pad(gray.astype(np.float64), 1, mode="reflect")
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * p[1:-1, 1:-1]


def reference_values(rgb: np.ndarray) -> dict[str, float]:
    """SPEC 3.1 formulas written independently with numpy/scipy on the RGB array."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, (r + g) / 2 - b
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    lit = (s >= 50) & (v >= 40)
    sharp = _numpy_laplacian(gray).var()
    hist = np.bincount(gray.ravel(), minlength=256)
    return {
        "brightness": gray.mean() / 255,
        "contrast": gray.std() / 255,
        "sharpness": sharp,
        "blur": BLUR_HALF_SHARPNESS / (BLUR_HALF_SHARPNESS + sharp),
        "colorfulness": math.sqrt(rg.std() ** 2 + yb.std() ** 2)
        + 0.3 * math.sqrt(rg.mean() ** 2 + yb.mean() ** 2),
        "red": np.mean(lit & ((h <= 10) | (h >= 170))),
        "green": np.mean(lit & (h >= 35) & (h <= 75)),
        "blue": np.mean(lit & (h >= 90) & (h <= 130)),
        "saturation": s.mean() / 255,
        "entropy": stats.entropy(hist, base=2),
        "clipping": np.mean((gray <= 2) | (gray >= 253)),
    }


def test_real_photos_match_numpy_reference():
    folder = shared("coco-val2014-fake100") / "images"
    for path in sorted(folder.glob("*.jpg"))[:12]:
        rgb = cv2.cvtColor(
            cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION),
            cv2.COLOR_BGR2RGB,
        )
        view = ImageView.from_rgb(rgb)
        ours = {m: get(m).fn(view) for m in PIXEL_METRICS}
        assert ours == pytest.approx(reference_values(rgb), rel=1e-9, abs=1e-12), path.name


def test_histograms_stay_exact_above_float32_counts():
    # regression: cv2.calcHist counts are float32, inexact past 2**24 pixels in one bin
    img = solid((200, 30, 30), h=4201, w=4201)  # 17,648,401 pixels, an odd count
    view = ImageView.from_rgb(img)
    gray = int(cv2.cvtColor(img[:1, :1], cv2.COLOR_RGB2GRAY)[0, 0])
    assert get("brightness").fn(view) == gray / 255
    assert get("red").fn(view) == 1.0
    assert get("contrast").fn(view) == 0.0


def test_view_caches_planes_once():
    view = ImageView.from_rgb(checkerboard())
    assert view.gray is view.gray
    assert view.hsv is view.hsv


def test_laplacian_sums_equal_opencv_at_every_border_case():
    """The fused kernel's sums equal ``cv2.Laplacian``'s (reflect-101 borders) exactly, on
    every shape up to 6x6 (1-pixel sides included) and on a large random image."""
    from qm_dagster.metrics.kernels import laplacian_sums

    rng = np.random.default_rng(3)
    shapes = [(h, w) for h in range(1, 7) for w in range(1, 7)] + [(701, 2403)]
    for shape in shapes:
        gray = rng.integers(0, 256, shape, dtype=np.uint8)
        lap = cv2.Laplacian(gray, cv2.CV_64F).astype(np.int64)
        assert laplacian_sums(gray) == (lap.sum(), (lap * lap).sum()), shape
    checker = (np.indices((64, 65)).sum(0) % 2 * 255).astype(np.uint8)  # |value| 1020
    lap = cv2.Laplacian(checker, cv2.CV_64F).astype(np.int64)
    assert laplacian_sums(checker) == (lap.sum(), (lap * lap).sum())
