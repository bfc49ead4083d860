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
import pyarrow as pa
from threadpoolctl import threadpool_limits

from qm_dagster import storage
from qm_dagster.allocator import tune_for_images
from qm_dagster.embedding_providers import load_function
from qm_dagster.embeddings import (
    crop_words,
    embed_bgr,
    embed_thumbnail,
    gray_thumb,
    phash_thumbnail,
    thumbnail,
)
from qm_dagster.metrics.objects import ObjectView
from qm_dagster.metrics.registry import MetricSpec, get, load_metrics
from qm_dagster.metrics.view import ImageView
from qm_dagster.passes.cache import ERRORS, KEY, STATUS, new_part_url, write_part

# Keep the stored orientation: annotations (COCO boxes, masks) refer to the pixel array as
# stored, so EXIF rotation must not be applied before metrics that read object pixels.
DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


@dataclass(frozen=True)
class ObjectItem:
    """What the worker needs of one annotation; ``key`` is its cache key."""

    annotation_id: int
    bbox: tuple[float, float, float, float]
    segmentation: str | None
    record: dict
    key: bytes = b""


@dataclass(frozen=True)
class ImageItem:
    image_id: object
    url: str
    objects: tuple[ObjectItem, ...] = ()
    key: bytes = b""  # the image's content id: its cache key
    size: int | None = None  # bytes the manifest saw
    digest: bool = False  # the key is the digest of the bytes (else an ETag's)


@dataclass(frozen=True)
class PassRequest:
    """What to compute for a chunk and where its results go.

    ``image_keys``/``object_keys`` are the asset keys of the pixel metrics to run and
    ``image_fps``/``object_fps`` the cache columns they are written under (same order).
    Embeddings and crop hashes are written when their fingerprints are set. ``storage`` is the
    base URL whose cache receives the parts; empty keeps results in memory (``keep``).
    """

    image_keys: tuple[str, ...] = ()
    object_keys: tuple[str, ...] = ()
    image_fps: tuple[str, ...] = ()
    object_fps: tuple[str, ...] = ()
    phash_fp: str = ""
    vector_fp: str = ""
    crops_fp: str = ""
    object_vector_fp: str = ""
    embedder: str = ""  # "module:function" of the user's own embedding, else the built-in
    storage: str = ""

    @property
    def embeddings(self) -> bool:
        return bool(self.vector_fp)

    @property
    def object_embeddings(self) -> bool:
        return bool(self.object_vector_fp)

    @property
    def needs_objects(self) -> bool:
        return bool(self.object_keys) or self.object_embeddings


@dataclass
class PartWritten:
    """One cache part a chunk wrote: the driver adds it to its index without reading it back."""

    kind: str
    url: str
    columns: tuple[str, ...]
    keys: np.ndarray
    failed: list[tuple[bytes, str]] = field(default_factory=list)  # undecodable image keys


@dataclass
class ChunkResult:
    """What a chunk reports to the driver: small, whatever the chunk computed."""

    images: int = 0
    decoded: int = 0
    failures: list[tuple[object, str, str]] = field(default_factory=list)  # not cached: reads
    parts: list[PartWritten] = field(default_factory=list)
    tables: dict[str, dict[str, list]] = field(default_factory=dict)  # with storage=""


def decode(data: bytes) -> np.ndarray | None:
    """BGR uint8 pixels at full resolution, or ``None`` when OpenCV cannot decode ``data``."""
    if not data:  # cv2.imdecode asserts on an empty buffer instead of returning None
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), DECODE_FLAGS)
    except cv2.error:
        return None


def init_worker(metric_modules: Sequence[str]) -> None:
    """Pool initializer: one OpenCV and one BLAS thread per process (a process per core; idle
    BLAS threads spin), buffers reused across images, and the metric modules imported."""
    cv2.setNumThreads(1)
    threadpool_limits(1)
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


def _values(specs, apply, args, errors: list[str], where: str = "") -> list[float]:
    values = []
    for spec in specs:
        try:
            values.append(apply(spec, *args))
        except Exception as exc:  # a user metric's bug must not lose other values
            errors.append(f"metric:{spec.name}{where}\t{type(exc).__name__}: {exc}")
            values.append(math.nan)
    return values


class _Rows:
    """Column lists of one part being filled."""

    def __init__(self, *names: str):
        self.columns: dict[str, list] = {n: [] for n in names}

    def append(self, **values) -> None:
        for name, value in values.items():
            self.columns[name].append(value)

    def extend_values(self, fps: Sequence[str], values: Sequence[float]) -> None:
        for fp, value in zip(fps, values, strict=True):
            self.columns[fp].append(value)

    def __len__(self) -> int:
        return len(self.columns[KEY])


def measure_chunk(items: Sequence[ImageItem], request: PassRequest) -> ChunkResult:
    """Decode each image of the chunk once; evaluate the image metrics, each object's metrics and
    the embeddings on it, and write the chunk's cache parts.

    A metric that raises on one image or object loses that one value (NaN and an ``errors``
    entry), never the others. An image OpenCV cannot decode is recorded as such (``status``), so
    no later pass decodes those bytes again; a read failure is reported, not cached.
    """
    image_specs = [get(k) for k in request.image_keys]
    object_specs = [get(k, "object") for k in request.object_keys]
    out = ChunkResult(images=len(items))
    images = _Rows(KEY, STATUS, ERRORS, *request.image_fps)
    if request.embeddings:
        images.columns.update({request.phash_fp: [], request.vector_fp: []})
    crops = _Rows(KEY, request.crops_fp) if request.crops_fp else None
    objects = _Rows(KEY, ERRORS, *request.object_fps)
    if request.object_embeddings:
        objects.columns[request.object_vector_fp] = []
    for item in items:
        try:
            data = storage.read_bytes(item.url)
        except (OSError, ValueError) as exc:
            out.failures.append((item.image_id, "read", f"{type(exc).__name__}: {exc}"))
            continue
        if not _same_content(item, data):  # values must never be cached under another key
            out.failures.append((item.image_id, "read", CHANGED))
            continue
        bgr = decode(data)
        if bgr is None:
            images.append(**{KEY: item.key, STATUS: UNDECODABLE, ERRORS: None})
            images.extend_values(request.image_fps, [math.nan] * len(request.image_fps))
            if request.embeddings:
                images.append(**{request.phash_fp: None, request.vector_fp: None})
            continue
        out.decoded += 1
        view = ImageView(bgr)
        errors: list[str] = []
        images.extend_values(request.image_fps, _values(image_specs, apply_metric, (view,), errors))
        images.append(**{KEY: item.key, STATUS: "", ERRORS: "\n".join(errors) or None})
        thumb = thumbnail(bgr) if request.embeddings or crops is not None else None
        if request.embeddings:
            vector = (
                np.asarray(load_function(request.embedder)(view.rgb), dtype=np.float32)
                if request.embedder
                else embed_thumbnail(thumb)
            )
            images.append(**{request.phash_fp: phash_thumbnail(thumb), request.vector_fp: vector})
        if crops is not None:  # the gray thumbnail now, its crop hashes for the chunk at once
            crops.append(**{KEY: item.key, request.crops_fp: gray_thumb(thumb)})
        if request.needs_objects:
            _measure_objects(item, view, object_specs, request, objects)
    _emit(out, request, "image", images, _image_types(request))
    if crops is not None and len(crops):
        grays = crops.columns[request.crops_fp]
        crops.columns[request.crops_fp] = crop_words(np.stack(grays), threads=1)
        _emit(out, request, "crops", crops, {request.crops_fp: pa.binary()})
    if request.needs_objects:
        types = {fp: pa.float64() for fp in request.object_fps}
        if request.object_embeddings:
            types[request.object_vector_fp] = pa.list_(pa.float32())
        _emit(out, request, "object", objects, types)
    return out


UNDECODABLE = "decode: OpenCV could not decode the file"
CHANGED = "the file changed after the manifest was built; materialize dataset/manifest again"


def _same_content(item: ImageItem, data: bytes) -> bool:
    """Whether ``data`` are the bytes the manifest identified: the digest for content ids made
    from the bytes, the size for ids made from an object store's ETag."""
    if item.size is not None and len(data) != item.size:
        return False
    if item.digest:
        return storage.content_digest(data).encode() == item.key
    return True


def _image_types(request: PassRequest) -> dict[str, pa.DataType]:
    types = {STATUS: pa.string(), ERRORS: pa.string()}
    types.update({fp: pa.float64() for fp in request.image_fps})
    if request.embeddings:
        types.update({request.phash_fp: pa.int64(), request.vector_fp: pa.list_(pa.float32())})
    return types


def _emit(out: ChunkResult, request: PassRequest, kind: str, rows: _Rows, types: dict) -> None:
    """Write ``rows`` as one cache part (or keep them, without storage)."""
    if not len(rows):
        return
    if not request.storage:
        out.tables[kind] = rows.columns
        return
    types = {KEY: pa.string(), ERRORS: pa.string(), **types}
    columns = {name: pa.array(values, type=types[name]) for name, values in rows.columns.items()}
    url = new_part_url(request.storage, kind)
    write_part(url, columns)
    keys = np.asarray(rows.columns[KEY], dtype="S32")
    status = rows.columns.get(STATUS, ())
    failed = [(k, s) for k, s in zip(keys, status, strict=False) if s]
    out.parts.append(PartWritten(kind, url, tuple(columns), keys, failed))


def _measure_objects(
    item: ImageItem,
    view: ImageView,
    specs: list[MetricSpec],
    request: PassRequest,
    rows: _Rows,
) -> None:
    for obj in item.objects:
        ov = ObjectView(view, obj.bbox, obj.segmentation)
        errors: list[str] = []
        where = f" (annotation {obj.annotation_id})"
        rows.extend_values(
            request.object_fps, _values(specs, apply_object_metric, (ov, obj), errors, where)
        )
        rows.append(**{KEY: obj.key, ERRORS: "\n".join(errors) or None})
        if request.object_embeddings:
            rows.append(**{request.object_vector_fp: embed_bgr(ov.roi(view.bgr))})


def measure_task(task: tuple[Sequence[ImageItem], PassRequest]) -> ChunkResult:
    """``measure_chunk`` on one ``(items, request)`` task, as the backends hand them out."""
    items, request = task
    return measure_chunk(items, request)
