"""The image pass: every selected pixel metric (image and object level) and the embeddings from
one decode of each image, on all cores."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qm_dagster.decode import (
    ChunkResult,
    ImageItem,
    ObjectItem,
    PassRequest,
    init_worker,
    measure_chunk,
)
from qm_dagster.metrics.registry import MetricSpec
from qm_dagster.metrics.view import Header
from qm_dagster.pool import chunked, map_chunks

FAILURE_COLUMNS = ["image_id", "stage", "reason"]
_OBJECT_FIELDS = [
    "annotation_id",
    "image_id",
    "category_id",
    "category",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "area",
    "iscrowd",
    "track_id",
    "annotator",
]


@dataclass
class PassResult:
    """Per-metric tables plus embeddings, what it cost and what failed."""

    values: dict[str, pd.DataFrame]
    failures: pd.DataFrame
    decoded: int
    seconds: float
    embeddings: pd.DataFrame | None = None
    object_embeddings: pd.DataFrame | None = None
    stats: dict[str, float] = field(default_factory=dict)


def _items(ok: pd.DataFrame, annotations: pd.DataFrame | None) -> list[ImageItem]:
    objects: dict[object, list[ObjectItem]] = {}
    if annotations is not None and not annotations.empty:
        records = annotations[_OBJECT_FIELDS].to_dict(orient="records")
        for rec, seg in zip(records, annotations.segmentation, strict=True):
            box = (rec["bbox_x"], rec["bbox_y"], rec["bbox_w"], rec["bbox_h"])
            objects.setdefault(rec["image_id"], []).append(
                ObjectItem(int(rec["annotation_id"]), box, seg, rec)
            )
    return [
        ImageItem(i, u, tuple(objects.get(i, ())))
        for i, u in zip(ok.image_id.to_list(), ok.url.to_list(), strict=True)
    ]


def measure_images(
    manifest: pd.DataFrame,
    specs: Sequence[MetricSpec],
    workers: int = 1,
    chunk_size: int = 16,
    annotations: pd.DataFrame | None = None,
    embeddings: bool = False,
    object_embeddings: bool = False,
    embedder: str = "",
) -> PassResult:
    """Compute ``specs`` (image and object level) for the measurable (``ok``) rows of ``manifest``.

    Header metrics come from the manifest's width/height (no decode). Pixel metrics share one
    decode per image; with none selected and no embeddings, nothing is decoded. Pool workers
    import the modules that define the selected metrics, so custom metrics must live in
    importable modules.
    """
    start = time.perf_counter()
    ok = manifest[manifest["ok"]]
    values: dict[str, pd.DataFrame] = {}
    for spec in (s for s in specs if s.reads == "header"):
        vals = [spec.fn(Header(int(w), int(h))) for w, h in zip(ok.width, ok.height, strict=True)]
        values[spec.name] = pd.DataFrame({"image_id": ok.image_id.to_list(), "value": vals})
    image_specs = [s for s in specs if s.level == "image" and s.reads_pixels]
    object_specs = [s for s in specs if s.level == "object" and s.reads_pixels]
    request = PassRequest(
        tuple(s.asset_key for s in image_specs),
        tuple(s.asset_key for s in object_specs),
        embeddings,
        object_embeddings,
        embedder,
    )
    result = PassResult(values, pd.DataFrame(columns=FAILURE_COLUMNS), 0, 0.0)
    if image_specs or object_specs or embeddings or object_embeddings:
        chunks = _run(
            ok,
            annotations if request.needs_objects else None,
            request,
            image_specs + object_specs,
            workers,
            chunk_size,
        )
        _collect(chunks, image_specs, object_specs, annotations, result)
    result.seconds = time.perf_counter() - start
    return result


def _run(ok, annotations, request, specs, workers, chunk_size) -> list[ChunkResult]:
    modules = tuple(sorted({s.fn.__module__ for s in specs}))
    done = dict(
        map_chunks(
            measure_chunk,
            chunked(_items(ok, annotations), chunk_size),
            (request,),
            workers,
            init_worker,
            (modules,),
            preload=("qm_dagster.decode", "qm_dagster.metrics.image", "qm_dagster.metrics.kernels"),
        )
    )
    return [done[i] for i in sorted(done)]


def _collect(chunks: list[ChunkResult], image_specs, object_specs, annotations, result) -> None:
    images = [row for c in chunks for row in c.images]
    ids = [r[0] for r in images]
    for j, spec in enumerate(image_specs):
        result.values[spec.name] = pd.DataFrame(
            {"image_id": ids, "value": [r[1][j] for r in images]}
        )
    objects = [row for c in chunks for row in c.objects]
    categories = (
        annotations.set_index("annotation_id").category
        if annotations is not None and not annotations.empty
        else pd.Series(dtype=object)
    )
    ann_ids = [r[0] for r in objects]
    for j, spec in enumerate(object_specs):
        result.values[spec.name] = pd.DataFrame(
            {
                "annotation_id": ann_ids,
                "image_id": [r[1] for r in objects],
                "category": categories.reindex(ann_ids).to_list(),
                "value": [r[2][j] for r in objects],
            }
        )
    emb = [row for c in chunks for row in c.embeddings]
    result.embeddings = pd.DataFrame(
        {
            "image_id": [r[0] for r in emb],
            "phash": np.array([r[1] for r in emb], dtype=np.int64),
            "vector": [r[2] for r in emb],
            "thumb": [r[3] for r in emb],
        }
    )
    obj_emb = [row for c in chunks for row in c.object_embeddings]
    result.object_embeddings = pd.DataFrame(
        {
            "annotation_id": [r[0] for r in obj_emb],
            "image_id": [r[1] for r in obj_emb],
            "vector": [r[2] for r in obj_emb],
        }
    )
    result.failures = pd.DataFrame([f for c in chunks for f in c.failures], columns=FAILURE_COLUMNS)
    result.decoded = sum(c.decoded for c in chunks)
