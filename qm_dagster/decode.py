"""Worker side of the image pass: decode one image once, run every selected metric on it.

Kept free of pandas and dagster so pool workers start fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from qm_dagster import storage
from qm_dagster.metrics.registry import MetricSpec, get, load_metrics
from qm_dagster.metrics.view import ImageView

# Keep the stored orientation: annotations (COCO boxes, masks) refer to the pixel array as
# stored, so EXIF rotation must not be applied before metrics that read object pixels.
DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION

ChunkItem = tuple[object, str]  # (image_id, url)
Failure = tuple[object, str, str]  # (image_id, stage, reason)


def decode(data: bytes) -> np.ndarray | None:
    """BGR uint8 pixels at full resolution, or ``None`` when OpenCV cannot decode ``data``."""
    return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), DECODE_FLAGS)


def init_worker(metric_modules: Sequence[str]) -> None:
    """Pool initializer: one OpenCV thread per process, and the user's metric modules imported."""
    cv2.setNumThreads(1)
    load_metrics(tuple(metric_modules))


def apply_metric(spec: MetricSpec, view: ImageView) -> float:
    arg = view if spec.reads == "view" else view.rgb
    value = float(spec.fn(arg))
    return value if math.isfinite(value) or math.isnan(value) else float("nan")


def measure_chunk(
    items: Sequence[ChunkItem], metric_keys: Sequence[str]
) -> tuple[list[tuple[object, list[float]]], list[Failure], int]:
    """Decode each image of the chunk once and evaluate every metric on it.

    Returns ``(rows, failures, decoded)``; a metric that raises on one image loses that one value
    (reported as a failure), never the image's other values.
    """
    specs = [get(k) for k in metric_keys]
    rows: list[tuple[object, list[float]]] = []
    failures: list[Failure] = []
    decoded = 0
    for image_id, url in items:
        try:
            data = storage.read_bytes(url)
        except (OSError, ValueError) as exc:
            failures.append((image_id, "read", f"{type(exc).__name__}: {exc}"))
            continue
        bgr = decode(data)
        if bgr is None:
            failures.append((image_id, "decode", "OpenCV could not decode the file"))
            continue
        decoded += 1
        view = ImageView(bgr)
        values = []
        for spec in specs:
            try:
                values.append(apply_metric(spec, view))
            except Exception as exc:  # a user metric's bug must not lose other values
                failures.append((image_id, f"metric:{spec.name}", f"{type(exc).__name__}: {exc}"))
                values.append(float("nan"))
        rows.append((image_id, values))
    return rows, failures, decoded
