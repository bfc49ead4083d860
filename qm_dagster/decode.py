"""Worker side of the image pass: decode one image once, run every selected pixel metric on it
and on each of its objects, and embed it.

Kept free of dagster; pool workers fork from a server that has imported this module already
(``image_pass``'s preload), so they start in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from qm_dagster import storage
from qm_dagster.allocator import tune_for_images
from qm_dagster.embedding_providers import load_function
from qm_dagster.embeddings import embed_bgr, gray_thumbnail, phash
from qm_dagster.metrics.objects import ObjectView
from qm_dagster.metrics.registry import MetricSpec, get, load_metrics
from qm_dagster.metrics.view import ImageView

# Keep the stored orientation: annotations (COCO boxes, masks) refer to the pixel array as
# stored, so EXIF rotation must not be applied before metrics that read object pixels.
DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


@dataclass(frozen=True)
class ObjectItem:
    """What the worker needs of one annotation."""

    annotation_id: int
    bbox: tuple[float, float, float, float]
    segmentation: str | None
    record: dict


@dataclass(frozen=True)
class ImageItem:
    image_id: object
    url: str
    objects: tuple[ObjectItem, ...] = ()


@dataclass(frozen=True)
class PassRequest:
    """Asset keys of the selected pixel metrics, and which embeddings to make."""

    image_keys: tuple[str, ...] = ()
    object_keys: tuple[str, ...] = ()
    embeddings: bool = False
    object_embeddings: bool = False
    embedder: str = ""  # "module:function" of the user's own embedding, else the built-in

    @property
    def needs_objects(self) -> bool:
        return bool(self.object_keys) or self.object_embeddings


@dataclass
class ChunkResult:
    images: list[tuple[object, list[float]]] = field(default_factory=list)
    objects: list[tuple[int, object, list[float]]] = field(default_factory=list)
    embeddings: list[tuple[object, int, np.ndarray, bytes]] = field(default_factory=list)
    object_embeddings: list[tuple[int, object, np.ndarray]] = field(default_factory=list)
    failures: list[tuple[object, str, str]] = field(default_factory=list)
    decoded: int = 0


def decode(data: bytes) -> np.ndarray | None:
    """BGR uint8 pixels at full resolution, or ``None`` when OpenCV cannot decode ``data``."""
    if not data:  # cv2.imdecode asserts on an empty buffer instead of returning None
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), DECODE_FLAGS)
    except cv2.error:
        return None


def init_worker(metric_modules: Sequence[str]) -> None:
    """Pool initializer: one OpenCV thread per process, buffers reused across images, and the
    metric modules imported."""
    cv2.setNumThreads(1)
    tune_for_images()
    load_metrics(tuple(metric_modules))


def _finite(value: object) -> float:
    value = float(value)
    return value if math.isfinite(value) else math.nan


def apply_metric(spec: MetricSpec, view: ImageView) -> float:
    return _finite(spec.fn(view if spec.reads == "view" else view.rgb))


def apply_object_metric(spec: MetricSpec, obj: ObjectView, item: ObjectItem) -> float:
    if spec.reads == "view":
        return _finite(spec.fn(obj))
    return _finite(spec.fn(obj.crop_rgb(), obj.mask > 0, dict(item.record)))


def _values(specs, apply, args, failures, image_id, where=""):
    values = []
    for spec in specs:
        try:
            values.append(apply(spec, *args))
        except Exception as exc:  # a user metric's bug must not lose other values
            failures.append(
                (image_id, f"metric:{spec.name}{where}", f"{type(exc).__name__}: {exc}")
            )
            values.append(math.nan)
    return values


def measure_chunk(items: Sequence[ImageItem], request: PassRequest) -> ChunkResult:
    """Decode each image of the chunk once; evaluate the image metrics, each object's metrics and
    the embeddings on it. A metric that raises on one image or object loses that one value
    (reported as a failure), never the others."""
    image_specs = [get(k) for k in request.image_keys]
    object_specs = [get(k, "object") for k in request.object_keys]
    out = ChunkResult()
    for item in items:
        try:
            data = storage.read_bytes(item.url)
        except (OSError, ValueError) as exc:
            out.failures.append((item.image_id, "read", f"{type(exc).__name__}: {exc}"))
            continue
        bgr = decode(data)
        if bgr is None:
            out.failures.append((item.image_id, "decode", "OpenCV could not decode the file"))
            continue
        out.decoded += 1
        view = ImageView(bgr)
        if image_specs:
            values = _values(image_specs, apply_metric, (view,), out.failures, item.image_id)
            out.images.append((item.image_id, values))
        if request.embeddings:
            vector = (
                np.asarray(load_function(request.embedder)(view.rgb), dtype=np.float32)
                if request.embedder
                else embed_bgr(bgr)
            )
            out.embeddings.append((item.image_id, phash(bgr), vector, gray_thumbnail(bgr)))
        if request.needs_objects:
            _measure_objects(item, view, object_specs, request, out)
    return out


def _measure_objects(
    item: ImageItem,
    view: ImageView,
    specs: list[MetricSpec],
    request: PassRequest,
    out: ChunkResult,
) -> None:
    for obj in item.objects:
        ov = ObjectView(view, obj.bbox, obj.segmentation)
        if specs:
            where = f" (annotation {obj.annotation_id})"
            values = _values(
                specs, apply_object_metric, (ov, obj), out.failures, item.image_id, where
            )
            out.objects.append((obj.annotation_id, item.image_id, values))
        if request.object_embeddings:
            out.object_embeddings.append(
                (obj.annotation_id, item.image_id, embed_bgr(ov.roi(view.bgr)))
            )
