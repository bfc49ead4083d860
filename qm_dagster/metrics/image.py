"""Built-in image-level metrics (SPEC 3.1), each a small function over the shared ImageView."""

from __future__ import annotations

import numpy as np

from qm_dagster.metrics.registry import metric
from qm_dagster.metrics.sums import IMAGE_BLUE, IMAGE_GREEN, IMAGE_RED, IMAGE_SAT
from qm_dagster.metrics.view import Header, ImageView

# Laplacian variance at which ``blur`` is 0.5; 100 is the threshold commonly used to call a photo
# blurry with the variance-of-Laplacian measure (Pech-Pacheco et al. 2000).
BLUR_HALF_SHARPNESS = 100.0
_LEVELS = np.arange(256, dtype=np.float64)


@metric("image", "Mean gray level / 255 (0 black, 1 white)", reads="view", value_range=(0, 1))
def brightness(view: ImageView) -> float:
    return float(view.gray_hist @ _LEVELS / view.pixels / 255.0)


@metric("image", "Standard deviation of gray levels / 255", reads="view", value_range=(0, 0.5))
def contrast(view: ImageView) -> float:
    return float(np.sqrt(view.gray_variance) / 255.0)


@metric(
    "image",
    "Variance of the Laplacian of the gray image (higher = sharper)",
    reads="view",
    value_range=(0, None),
    outliers="log",  # spread over orders of magnitude; 0 (a flat image) is below every fence
)
def sharpness(view: ImageView) -> float:
    return view.laplacian_variance


@metric(
    "image",
    f"Blur in [0,1]: {BLUR_HALF_SHARPNESS:g} / ({BLUR_HALF_SHARPNESS:g} + sharpness); 1 = flat",
    reads="view",
    value_range=(0, 1),
)
def blur(view: ImageView) -> float:
    return BLUR_HALF_SHARPNESS / (BLUR_HALF_SHARPNESS + view.laplacian_variance)


@metric(
    "image",
    "Hasler-Suesstrunk colourfulness: sqrt(sd_rg^2+sd_yb^2) + 0.3*sqrt(mean_rg^2+mean_yb^2)",
    reads="view",
    value_range=(0, None),
)
def colorfulness(view: ImageView) -> float:
    mean_rg, var_rg, mean_yb, var_yb = view.opponent_moments
    return float(np.sqrt(var_rg + var_yb) + 0.3 * np.hypot(mean_rg, mean_yb))


@metric(
    "image",
    "Share of red pixels (H in [0,10] or [170,179], S>=50, V>=40)",
    reads="view",
    value_range=(0, 1),
)
def red(view: ImageView) -> float:
    return view.hue_sums[IMAGE_RED] / view.pixels


@metric(
    "image", "Share of green pixels (H in [35,75], S>=50, V>=40)", reads="view", value_range=(0, 1)
)
def green(view: ImageView) -> float:
    return view.hue_sums[IMAGE_GREEN] / view.pixels


@metric(
    "image", "Share of blue pixels (H in [90,130], S>=50, V>=40)", reads="view", value_range=(0, 1)
)
def blue(view: ImageView) -> float:
    return view.hue_sums[IMAGE_BLUE] / view.pixels


@metric("image", "Mean HSV saturation / 255", reads="view", value_range=(0, 1))
def saturation(view: ImageView) -> float:
    return view.hue_sums[IMAGE_SAT] / view.pixels / 255.0


@metric(
    "image",
    "Shannon entropy of the 256-bin gray histogram, bits",
    reads="view",
    value_range=(0, 8),
    unit="bits",
)
def entropy(view: ImageView) -> float:
    p = view.gray_hist[view.gray_hist > 0] / view.pixels
    return float(-(p * np.log2(p)).sum())


@metric(
    "image",
    "Share of gray pixels <= 2 or >= 253 (crushed shadows, blown highlights)",
    reads="view",
    value_range=(0, 1),
)
def clipping(view: ImageView) -> float:
    hist = view.gray_hist
    return float((hist[:3].sum() + hist[253:].sum()) / view.pixels)


@metric("image", "Image width in pixels (header)", reads="header", value_range=(1, None), unit="px")
def width(header: Header) -> float:
    return float(header.width)


@metric(
    "image", "Image height in pixels (header)", reads="header", value_range=(1, None), unit="px"
)
def height(header: Header) -> float:
    return float(header.height)


@metric("image", "Width / height (header)", reads="header", value_range=(0, None), outliers="log")
def aspect_ratio(header: Header) -> float:
    return header.width / header.height


@metric(
    "image",
    "Width * height in pixels (header)",
    reads="header",
    value_range=(1, None),
    unit="px",
    outliers="log",
)
def area(header: Header) -> float:
    return float(header.width * header.height)
