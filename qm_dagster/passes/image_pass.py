"""The image pass: every selected pixel metric (image and object level) and the embeddings from
one decode of each image, streamed through a content-keyed cache.

Three streamed sweeps over the manifest, in batches, so the driver never holds a version:

1. plan: look every image's (and object's) values up in the cache; what is missing is grouped
   by what has to be computed, into chunks;
2. compute: the chunks run on the backend (local process pool or Dask); each worker writes its
   chunk's values to the cache itself and reports a few counts;
3. assemble: each selected asset's table is written in manifest order, batch by batch, from the
   cache parts (fresh and reused values alike, one code path), to its final URL atomically.

A rerun after a kill finds the finished chunks in the cache and computes only the rest.
"""

from __future__ import annotations

import hashlib
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from qm_dagster import embeddings, storage
from qm_dagster.allocator import arrow_single_threaded, release_memory
from qm_dagster.coco import ANNOTATION_COLUMNS
from qm_dagster.metrics.registry import MetricSpec, get
from qm_dagster.metrics.view import Header
from qm_dagster.passes.backends import Backend, LocalPool
from qm_dagster.passes.cache import (
    ERRORS,
    CacheIndex,
    Located,
    PartReader,
    fingerprint,
    object_keys,
)
from qm_dagster.passes.decode import ImageItem, ObjectItem, PassRequest
from qm_dagster.passes.progress import Progress

# Part of every fingerprint: bump when the decode or the shared pixel code changes values.
ENGINE_VERSION = "2"
# Of the quantities made from the shared thumbnail (built-in embeddings, hashes, crop hashes)
THUMB_CODE = f"{ENGINE_VERSION}.{embeddings.THUMB_VERSION}"
EMBEDDINGS, OBJECT_EMBEDDINGS = "data/embeddings", "label/embeddings"
FAILURE_COLUMNS = ["image_id", "stage", "reason"]
BATCH_ROWS = 4096  # manifest rows per sweep batch: the driver's memory is a few batches
# Rows per slice where rows are big (worker items with their objects, crop hashes, vectors): the
# driver's peak is then the same for any version larger than a slice
HEAVY_ROWS = 2048
# What the workers need of an annotation (its record goes to custom object metrics)
_OBJECT_FIELDS = [
    c for c in ANNOTATION_COLUMNS if c not in ("segmentation", "keypoints", "created")
]
_PREDICTION_FIELDS = ["model", "prediction_id", "image_id", "category_id", "category", "bbox_x"]
_PREDICTION_FIELDS += ["bbox_y", "bbox_w", "bbox_h", "score", "segmentation", "track_id"]
_MANIFEST_COLUMNS = ["image_id", "url", "content_hash", "bytes", "width", "height", "ok"]
_ASSEMBLY_COLUMNS = ["image_id", "content_hash", "width", "height", "ok"]  # no file to open

Source = pd.DataFrame | str  # a table in memory, or the URL of a Parquet file


@dataclass
class PassResult:
    """Where each selected asset's table was written, what it cost, what was reused."""

    outputs: dict[str, str]  # asset key -> URL of its Parquet file
    rows: dict[str, int]
    failures: pd.DataFrame
    images: int = 0
    decoded: int = 0
    reused: int = 0
    seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)

    def table(self, asset_key: str) -> pd.DataFrame:
        return storage.read_parquet(self.outputs[asset_key])

    def failed(self, stages: Sequence[str]) -> int:
        """Failures whose stage (before any " (annotation n)") is one of ``stages``."""
        stage = self.failures.stage.str.split(" ").str[0]
        return int(stage.isin(stages).sum())


@dataclass(frozen=True)
class Predicted:
    """The predicted objects the object pixel metrics measure too (``model/object_...``): the
    predictions of ``models`` (``*``: every model) scoring at least ``min_score``."""

    source: Source
    models: tuple[str, ...]
    min_score: float = 0.0

    def select(self, predictions: pd.DataFrame) -> pd.DataFrame:
        keep = predictions.score.to_numpy(float) >= self.min_score
        if "*" not in self.models:
            keep &= predictions.model.isin(self.models).to_numpy()
        return predictions[keep]


@dataclass(frozen=True)
class Selection:
    """What one pass computes: metric specs and which embeddings, with their fingerprints."""

    specs: tuple[MetricSpec, ...]
    embeddings: bool = False
    object_embeddings: bool = False
    embedder: str = ""
    predicted: Predicted | None = None

    @property
    def image_specs(self) -> list[MetricSpec]:
        return [s for s in self.specs if s.level == "image" and s.reads_pixels]

    @property
    def object_specs(self) -> list[MetricSpec]:
        """The selected label tables of object pixel metrics."""
        return [s for s in self.specs if s.level == "object" and s.reads_pixels]

    @property
    def prediction_specs(self) -> list[MetricSpec]:
        """The selected model tables of object pixel metrics on predicted objects."""
        return [s for s in self.specs if s.on_predictions] if self.predicted else []

    @property
    def measured_specs(self) -> list[MetricSpec]:
        """What the workers run on every object (annotated and predicted): the object metrics
        of both kinds of table, each once."""
        own = self.object_specs
        keys = {s.asset_key for s in own}
        twins = {s.label_twin for s in self.prediction_specs} - keys
        return own + [get(key) for key in sorted(twins)]

    @property
    def header_specs(self) -> list[MetricSpec]:
        return [s for s in self.specs if s.reads == "header"]

    @property
    def needs_objects(self) -> bool:
        return bool(self.measured_specs) or self.object_embeddings

    @property
    def needs_pixels(self) -> bool:
        return bool(self.image_specs) or self.needs_objects or self.embeddings

    def fp(self, spec: MetricSpec) -> str:
        """Its cache column: shared by an object metric and its twin on predictions."""
        return fingerprint(spec.label_twin, f"{ENGINE_VERSION}.{spec.code_version}")

    @property
    def phash_fp(self) -> str:
        return fingerprint(f"{EMBEDDINGS}/phash", THUMB_CODE) if self.embeddings else ""

    @property
    def vector_fp(self) -> str:
        if not self.embeddings:
            return ""
        if self.embedder:  # the user's function sees the decoded image, not our thumbnail
            return fingerprint(f"{EMBEDDINGS}/vector", ENGINE_VERSION, self.embedder)
        return fingerprint(f"{EMBEDDINGS}/vector", THUMB_CODE, "builtin")

    @property
    def crops_fp(self) -> str:
        return fingerprint(f"{EMBEDDINGS}/crops", THUMB_CODE) if self.embeddings else ""

    @property
    def object_vector_fp(self) -> str:
        if not self.object_embeddings:
            return ""
        return fingerprint(f"{OBJECT_EMBEDDINGS}/vector", THUMB_CODE)


def measure_images(
    manifest: Source,
    specs: Sequence[MetricSpec],
    storage_url: str,
    version: str,
    workers: int = 1,
    chunk_size: int = 0,
    annotations: Source | None = None,
    embeddings: bool = False,
    object_embeddings: bool = False,
    embedder: str = "",
    backend: Backend | None = None,
    reuse: bool = True,
    log: Callable[[str], None] | None = None,
    predicted: Predicted | None = None,
) -> PassResult:
    """Compute ``specs`` (image and object level) for the measurable (``ok``) rows of
    ``manifest`` and write each one's table to ``<storage_url>/<asset key>/<version>.parquet``.

    Header metrics come from the manifest's width/height (no decode). Pixel values are taken
    from the cache when present (``reuse``), else computed with one decode per image on
    ``backend`` (default: a local pool of ``workers`` processes) and cached. ``log`` receives
    progress lines (done / total, images/s, ETA) every few seconds. With ``predicted``, object
    pixel metrics on predictions (``specs`` of level prediction) are measured in the same pass.
    """
    start = time.perf_counter()
    selection = Selection(tuple(specs), embeddings, object_embeddings, embedder, predicted)
    result = PassResult({}, {}, pd.DataFrame(columns=FAILURE_COLUMNS))
    with arrow_single_threaded():
        pass_ = _Pass(manifest, annotations, selection, storage_url, reuse)
        if selection.needs_pixels:
            backend = backend or LocalPool(workers)
            tasks, todo = pass_.plan(chunk_size or auto_chunk_size, backend.slots())
            progress = Progress(todo, log)
            for summary in backend.run(tasks, pass_.modules()):
                pass_.absorb(summary)
                progress.advance(summary.images)
            progress.finish()
            result.stats["compute seconds"] = round(progress.elapsed, 3)
            result.stats["peak MB after compute"] = _peak_mb()
        pass_.assemble(version, result)
    result.stats["peak MB after assembly"] = _peak_mb()
    result.decoded, result.reused = pass_.decoded, pass_.images - pass_.decoded_images
    result.images = pass_.images
    result.seconds = time.perf_counter() - start
    return result


def _peak_mb() -> float:
    """This process's peak resident size so far (Linux reports KB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def auto_chunk_size(todo: int, slots: int) -> int:
    """Images per chunk: 16 for small passes (even load on few workers), growing to 256 so a
    large pass writes a few thousand cache parts, not a part per 16 images; at least ~32 chunks
    per worker keep the tail short."""
    return int(min(256, max(16, todo // (32 * max(1, slots)))))


class _Pass:
    """State of one pass: its inputs, cache indexes and what the workers reported."""

    def __init__(self, manifest, annotations, selection: Selection, storage_url: str, reuse: bool):
        self.manifest, self.annotations, self.sel = manifest, annotations, selection
        self.storage = storage_url
        self.index = {
            kind: CacheIndex.load(storage_url, kind)
            if reuse
            else CacheIndex.empty(storage_url, kind)
            for kind in ("image", "object", "crops")
        }
        self.decoded = 0
        self.images = 0
        self.decoded_images = 0
        self.read_failures: list[tuple[object, str, str]] = []

    def modules(self) -> tuple[str, ...]:
        return tuple(sorted({s.fn.__module__ for s in self.sel.specs}))

    # -- sweep 1: plan ---------------------------------------------------------------------

    def _image_fps(self) -> list[tuple[str, str]]:
        """(fingerprint, part kind) of every per-image pixel quantity selected."""
        fps = [(self.sel.fp(s), "image") for s in self.sel.image_specs]
        if self.sel.embeddings:
            fps += [(self.sel.phash_fp, "image"), (self.sel.vector_fp, "image")]
            fps.append((self.sel.crops_fp, "crops"))
        return fps

    def _object_fps(self) -> list[str]:
        fps = [self.sel.fp(s) for s in self.sel.measured_specs]
        return fps + ([self.sel.object_vector_fp] if self.sel.object_embeddings else [])

    def plan(
        self, chunk_size: int | Callable[[int, int], int], slots: int
    ) -> tuple[Iterator[tuple[list[ImageItem], PassRequest]], int]:
        """The chunks to compute (a lazy stream, manifest order within each request) and how
        many images they hold. Holds one small bit mask per image, no item."""
        image_fps, object_fps = self._image_fps(), self._object_fps()
        masks: list[np.ndarray] = []
        for batch in self._batches():
            masks.append(self._missing(batch, image_fps, object_fps))
        todo = int(sum(int((m != 0).sum()) for m in masks))
        size = chunk_size(todo, slots) if callable(chunk_size) else chunk_size
        return self._tasks(masks, image_fps, object_fps, size), todo

    def _missing(self, batch: pd.DataFrame, image_fps, object_fps) -> np.ndarray:
        """Per image of ``batch``: a bit mask of the selected quantities it lacks (bit i for
        ``image_fps[i]``, the next bits for object quantities any of its objects lacks)."""
        keys = batch.content_hash.to_numpy(dtype="S32")
        mask = np.zeros(len(batch), dtype=np.int64)
        failed = self.index["image"].failed_mask(keys)
        for bit, (fp, kind) in enumerate(image_fps):
            mask |= (~self.index[kind].locate(keys, fp).found).astype(np.int64) << bit
        if object_fps:
            objects = self._measured(batch)
            okeys = _object_keys(batch, objects)
            pos = pd.Index(batch.image_id).get_indexer(objects.image_id)
            for j, fp in enumerate(object_fps):
                lacking = ~self.index["object"].locate(okeys, fp).found
                bits = np.zeros(len(batch), dtype=np.int64)
                np.bitwise_or.at(bits, pos[lacking], np.int64(1) << (len(image_fps) + j))
                mask |= bits
        mask[failed] = 0  # bytes OpenCV cannot decode are not tried again
        return mask

    def _tasks(self, masks, image_fps, object_fps, chunk_size):
        groups: dict[int, list[ImageItem]] = {}
        for batch, mask in zip(self._batches(), masks, strict=True):
            need = mask != 0
            if not need.any():
                continue
            rows, lacking = batch[need].reset_index(drop=True), mask[need]
            objects = self._measured(rows) if object_fps else None
            local = storage.is_local(storage.filesystem(rows.url.iloc[0])[0])
            for part in _slices(len(rows), HEAVY_ROWS):  # worker items of a slice at a time
                sub = rows.iloc[part]
                by_image = {}
                if objects is not None:
                    by_image = _object_items(sub, objects[objects.image_id.isin(sub.image_id)])
                for image_id, url, key, size, m in zip(
                    sub.image_id, sub.url, sub.content_hash, sub.bytes, lacking[part], strict=True
                ):
                    items = groups.setdefault(int(m), [])
                    objs = by_image.get(image_id, ())
                    items.append(ImageItem(image_id, url, objs, key.encode(), int(size), local))
                    if len(items) >= chunk_size:
                        yield items, self._request(int(m), image_fps, object_fps)
                        groups[int(m)] = []
        for m, items in groups.items():
            if items:
                yield items, self._request(m, image_fps, object_fps)

    def _request(self, mask: int, image_fps, object_fps) -> PassRequest:
        """What to compute for images lacking ``mask``: each quantity computed at most with the
        others of its group (embeddings and crop hashes travel together)."""
        lacking = {fp for bit, (fp, _) in enumerate(image_fps) if mask >> bit & 1}
        n = len(image_fps)
        lacking_obj = {fp for j, fp in enumerate(object_fps) if mask >> (n + j) & 1}
        image = [s for s in self.sel.image_specs if self.sel.fp(s) in lacking]
        objects = [s for s in self.sel.measured_specs if self.sel.fp(s) in lacking_obj]
        embed = bool(lacking & {self.sel.phash_fp, self.sel.vector_fp, self.sel.crops_fp} - {""})
        obj_embed = self.sel.object_embeddings and self.sel.object_vector_fp in lacking_obj
        return PassRequest(
            image_keys=tuple(s.asset_key for s in image),
            object_keys=tuple(s.asset_key for s in objects),
            image_fps=tuple(self.sel.fp(s) for s in image),
            object_fps=tuple(self.sel.fp(s) for s in objects),
            phash_fp=self.sel.phash_fp if embed else "",
            vector_fp=self.sel.vector_fp if embed else "",
            crops_fp=self.sel.crops_fp if embed else "",
            object_vector_fp=self.sel.object_vector_fp if obj_embed else "",
            embedder=self.sel.embedder,
            storage=self.storage,
        )

    # -- sweep 2: what the workers report ---------------------------------------------------

    def absorb(self, summary) -> None:
        self.decoded += summary.decoded
        self.decoded_images += summary.images
        self.read_failures += summary.failures
        for part in summary.parts:
            self.index[part.kind].add(part.url, part.columns, part.keys, part.failed)

    # -- sweep 3: assemble ------------------------------------------------------------------

    def schemas(self) -> dict[str, pa.Schema]:
        """The schema of every selected output table."""
        image_id = pa.field("image_id", _id_type(self.manifest))
        value = pa.field("value", pa.float64())
        vector = pa.field("vector", pa.list_(pa.float32()))
        annotation = pa.field("annotation_id", pa.int64())
        out = {s.asset_key: pa.schema([image_id, value]) for s in self.sel.header_specs}
        out.update({s.asset_key: pa.schema([image_id, value]) for s in self.sel.image_specs})
        category = pa.field("category", pa.string())
        out.update(
            {
                s.asset_key: pa.schema([annotation, image_id, category, value])
                for s in self.sel.object_specs
            }
        )
        model, prediction = pa.field("model", pa.string()), pa.field("prediction_id", pa.int64())
        out.update(
            {
                s.asset_key: pa.schema([model, prediction, image_id, category, value])
                for s in self.sel.prediction_specs
            }
        )
        if self.sel.embeddings:
            phash, crops = pa.field("phash", pa.int64()), pa.field("crops", pa.binary())
            out[EMBEDDINGS] = pa.schema([image_id, phash, vector, crops])
        if self.sel.object_embeddings:
            out[OBJECT_EMBEDDINGS] = pa.schema([annotation, image_id, vector])
        return out

    def assemble(self, version: str, result: PassResult) -> None:
        for index in self.index.values():
            index.seal()
        sinks = _Sinks(self.storage, version, self.schemas())
        # every gather visits each part it needs once (the metrics of a part together), in
        # order: a few parts of each kind in memory suffice
        readers = {kind: PartReader(index, budget=8 << 20) for kind, index in self.index.items()}
        failures: list[tuple[object, str, str]] = []
        try:
            for batch in self._batches(_ASSEMBLY_COLUMNS):
                self.images += len(batch)
                self._assemble_images(batch, sinks, readers, failures)
                if self.sel.object_specs or self.sel.object_embeddings:
                    self._assemble_objects(batch, sinks, readers["object"], failures)
                if self.sel.prediction_specs:
                    self._assemble_predictions(batch, sinks, readers["object"], failures)
        except BaseException as exc:
            sinks.abort(exc)
            raise
        sinks.close()
        result.outputs, result.rows = sinks.urls(), sinks.rows()
        result.failures = pd.DataFrame(failures + self.read_failures, columns=FAILURE_COLUMNS)

    def _assemble_images(self, batch, sinks: _Sinks, readers, failures) -> None:
        ids = pa.array(batch.image_id.to_numpy())
        for spec in self.sel.header_specs:
            vals = [
                spec.fn(Header(int(w), int(h)))
                for w, h in zip(batch.width, batch.height, strict=False)
            ]
            sinks.write(spec.asset_key, {"image_id": ids, "value": pa.array(vals, pa.float64())})
        if not (self.sel.image_specs or self.sel.embeddings):
            return
        keys = batch.content_hash.to_numpy(dtype="S32")
        failed = self.index["image"].failed_mask(keys)
        for key, image_id in zip(keys[failed], batch.image_id[failed], strict=True):
            failures.append((image_id, "decode", self.index["image"].failed[key]))
        fps = [self.sel.fp(spec) for spec in self.sel.image_specs]
        gathered = _gather_all(readers["image"], keys, fps, failed)
        for spec, fp in zip(self.sel.image_specs, fps, strict=True):
            take, values, errors = gathered[fp]
            sinks.write(spec.asset_key, {"image_id": ids.filter(pa.array(take)), "value": values})
            failures += _metric_errors(errors, batch.image_id[take], spec.name)
        if self.sel.embeddings:
            self._assemble_embeddings(batch, keys, failed, ids, sinks, readers)

    def _assemble_embeddings(self, batch, keys, failed, ids, sinks, readers) -> None:
        image, sel = self.index["image"], self.sel
        phash = image.locate(keys, sel.phash_fp)
        vector = image.locate(keys, sel.vector_fp)
        crops = self.index["crops"].locate(keys, sel.crops_fp)
        take = phash.found & vector.found & crops.found & ~failed
        ids = ids.filter(pa.array(take))
        phash, vector, crops = phash.subset(take), vector.subset(take), crops.subset(take)
        for part in _slices(len(ids), HEAVY_ROWS):  # crop hashes are 2 KB a row
            columns = {
                "image_id": ids[part],
                "phash": _column(readers["image"], phash.subset(part), sel.phash_fp),
                "vector": _column(readers["image"], vector.subset(part), sel.vector_fp),
                "crops": _column(readers["crops"], crops.subset(part), sel.crops_fp),
            }
            sinks.write(EMBEDDINGS, columns)

    def _assemble_objects(self, batch, sinks: _Sinks, reader: PartReader, failures) -> None:
        objects = self._objects(batch)
        if objects.empty:
            return
        okeys = _object_keys(batch, objects)
        base = {
            "annotation_id": pa.array(objects.annotation_id.to_numpy()),
            "image_id": pa.array(objects.image_id.to_numpy()),
            "category": pa.array(objects.category.to_numpy(object), pa.string()),
        }
        self._write_objects(self.sel.object_specs, okeys, base, objects, sinks, reader, failures)
        if self.sel.object_embeddings:
            fp = self.sel.object_vector_fp
            located = reader.index.locate(okeys, fp)
            take = located.found
            located = located.subset(take)
            cols = {k: v.filter(pa.array(take)) for k, v in base.items() if k != "category"}
            for part in _slices(len(located.part), 8 * HEAVY_ROWS):  # 564 bytes a vector
                sliced = {k: v[part] for k, v in cols.items()}
                vectors = _column(reader, located.subset(part), fp)
                sinks.write(OBJECT_EMBEDDINGS, {**sliced, "vector": vectors})

    def _assemble_predictions(self, batch, sinks: _Sinks, reader: PartReader, failures) -> None:
        predictions = self._predicted(batch)
        if predictions.empty:
            return
        okeys = _object_keys(batch, _as_objects(predictions))
        base = {
            "model": pa.array(predictions.model.to_numpy(object), pa.string()),
            "prediction_id": pa.array(predictions.prediction_id.to_numpy(np.int64)),
            "image_id": pa.array(predictions.image_id.to_numpy()),
            "category": pa.array(predictions.category.to_numpy(object), pa.string()),
        }
        specs = self.sel.prediction_specs
        self._write_objects(specs, okeys, base, predictions, sinks, reader, failures)

    def _write_objects(self, specs, okeys, base, rows, sinks, reader, failures) -> None:
        """Each of ``specs``' table rows for the objects ``rows`` (keys ``okeys``, row columns
        ``base``): the values found in the cache, and their failures."""
        none = np.zeros(len(rows), dtype=bool)
        fps = [self.sel.fp(spec) for spec in specs]
        gathered = _gather_all(reader, okeys, fps, none)
        for spec, fp in zip(specs, fps, strict=True):
            take, values, errors = gathered[fp]
            sinks.write(
                spec.asset_key,
                {**{k: v.filter(pa.array(take)) for k, v in base.items()}, "value": values},
            )
            failures += _metric_errors(errors, rows.image_id[take], spec.name)

    # -- reading the inputs in batches ------------------------------------------------------

    def _batches(self, columns: list[str] = _MANIFEST_COLUMNS) -> Iterator[pd.DataFrame]:
        for batch in _read_batches(self.manifest, columns):
            frame = batch.to_pandas()
            frame = frame[frame.ok.astype(bool)]
            if len(frame):
                yield frame.reset_index(drop=True)
            release_memory()

    def _objects(self, batch: pd.DataFrame) -> pd.DataFrame:
        """The annotations of ``batch``'s images (a filtered scan: bounded by the batch)."""
        columns = [*_OBJECT_FIELDS, "segmentation"]
        if self.annotations is None:
            return pd.DataFrame(columns=columns)
        if isinstance(self.annotations, pd.DataFrame):
            frame = self.annotations
            return frame[frame.image_id.isin(batch.image_id)][columns].reset_index(drop=True)
        return self._annotation_groups.read(batch.image_id, columns)

    def _predicted(self, batch: pd.DataFrame) -> pd.DataFrame:
        """The selected predictions of ``batch``'s images (a filtered scan, as ``_objects``)."""
        predicted = self.sel.predicted
        if predicted is None:
            return pd.DataFrame(columns=_PREDICTION_FIELDS)
        if isinstance(predicted.source, pd.DataFrame):
            frame = predicted.source
            rows = frame[frame.image_id.isin(batch.image_id)][_PREDICTION_FIELDS]
        else:
            rows = self._prediction_groups.read(batch.image_id, _PREDICTION_FIELDS)
        return predicted.select(rows).reset_index(drop=True)

    def _measured(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Every object the workers measure for ``batch``: annotated, then predicted."""
        objects = self._objects(batch)
        if not self.sel.prediction_specs:
            return objects
        predicted = _as_objects(self._predicted(batch))
        return pd.concat([objects, predicted], ignore_index=True) if len(objects) else predicted

    @cached_property
    def _annotation_groups(self) -> _RowGroups:
        return _RowGroups(self.annotations)

    @cached_property
    def _prediction_groups(self) -> _RowGroups:
        return _RowGroups(self.sel.predicted.source)


class _RowGroups:
    """The annotation file's row groups and each one's image_id range (from the footer's
    statistics), so a batch reads only the groups that can hold its images: single-threaded
    reads of those groups, measured to leave the driver ~20 MB less allocator residue at 100k
    images than a pyarrow.dataset scan with the same filter."""

    def __init__(self, url: str):
        import pyarrow.parquet as pq

        self.url = url
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        column = meta.schema.to_arrow_schema().get_field_index("image_id")
        self.ranges = [
            self._range(meta.row_group(i).column(column)) for i in range(meta.num_row_groups)
        ]

    @staticmethod
    def _range(chunk) -> tuple[object, object] | None:
        stats = chunk.statistics
        return (stats.min, stats.max) if stats is not None and stats.has_min_max else None

    def read(self, image_ids: pd.Series, columns: list[str]) -> pd.DataFrame:
        import pyarrow.parquet as pq

        if not self.ranges:
            return pd.DataFrame(columns=columns)
        low, high = image_ids.min(), image_ids.max()
        groups = [
            i for i, r in enumerate(self.ranges) if r is None or (r[1] >= low and r[0] <= high)
        ]
        if not groups:
            return pd.DataFrame(columns=columns)
        fs, path = storage.filesystem(self.url)
        with fs.open(path, "rb") as fh:
            table = pq.ParquetFile(fh).read_row_groups(groups, columns=columns, use_threads=False)
        if pa.types.is_null(table.schema.field("image_id").type):  # no annotation at all
            return pd.DataFrame(columns=columns)
        wanted = pa.array(image_ids.tolist(), type=table.schema.field("image_id").type)
        return table.filter(pc.is_in(table.column("image_id"), value_set=wanted)).to_pandas()


def _slices(n: int, size: int) -> Iterator[slice]:
    return (slice(start, min(start + size, n)) for start in range(0, n, size))


def _gather_all(
    reader: PartReader, keys: np.ndarray, fps: Sequence[str], exclude: np.ndarray
) -> dict[str, tuple[np.ndarray, pa.Array, pa.Array]]:
    """(rows taken, values, errors) of each fingerprint for ``keys``; rows not found or
    excluded are left out (their images could not be decoded or read). Fingerprints found in the
    same rows of the same parts (all of them, in a fresh pass) are gathered together: each part
    is read once for all of them, so the part cache needs to hold only a few parts."""
    groups: dict[bytes, list[str]] = {}
    located: dict[str, Located] = {}
    for fp in fps:
        located[fp] = where = reader.index.locate(keys, fp)
        signature = hashlib.blake2b(where.part.tobytes() + where.row.tobytes()).digest()
        groups.setdefault(signature, []).append(fp)
    out = {}
    for members in groups.values():
        where = located[members[0]]
        take = where.found & ~exclude
        got = reader.gather(where.subset(take), (*members, ERRORS))
        out.update({fp: (take, got[fp], got[ERRORS]) for fp in members})
    return out


def _column(reader: PartReader, located: Located, fp: str) -> pa.Array:
    """The values of one fingerprint at ``located`` (all found)."""
    return reader.gather(located, (fp,))[fp]


def _object_keys(batch: pd.DataFrame, objects: pd.DataFrame) -> np.ndarray:
    content = batch.set_index("image_id").content_hash.reindex(objects.image_id)
    return object_keys(content.reset_index(drop=True), objects.reset_index(drop=True))


def _as_objects(predictions: pd.DataFrame) -> pd.DataFrame:
    """Predictions as the object rows workers measure (the record a custom object metric
    receives: its ``annotation_id`` is the prediction's id; no crowd, no area)."""
    frame = predictions.assign(annotation_id=predictions.prediction_id, area=np.nan, iscrowd=0)
    return frame.assign(annotator=None)[[*_OBJECT_FIELDS, "segmentation"]]


def _object_items(
    rows: pd.DataFrame, objects: pd.DataFrame
) -> dict[object, tuple[ObjectItem, ...]]:
    """Worker items of the objects of the images to decode."""
    keys = _object_keys(rows, objects)
    out: dict[object, list[ObjectItem]] = {}
    records = objects[_OBJECT_FIELDS].to_dict(orient="records")
    for rec, seg, key in zip(records, objects.segmentation, keys, strict=True):
        box = (rec["bbox_x"], rec["bbox_y"], rec["bbox_w"], rec["bbox_h"])
        seg = None if seg is None or (isinstance(seg, float) and np.isnan(seg)) else seg
        out.setdefault(rec["image_id"], []).append(
            ObjectItem(int(rec["annotation_id"]), box, seg, rec, bytes(key))
        )
    return {k: tuple(v) for k, v in out.items()}


def _metric_errors(errors: pa.Array, image_ids: pd.Series, name: str) -> list[tuple]:
    """Failure rows of metric ``name`` from a gathered ``errors`` column (mostly null)."""
    present = np.flatnonzero(errors.is_valid().to_numpy(zero_copy_only=False))
    out = []
    ids = image_ids.to_numpy()
    for i in present:
        for line in errors[int(i)].as_py().split("\n"):
            stage, _, reason = line.partition("\t")
            if stage.split(" ")[0] == f"metric:{name}":
                out.append((ids[i], stage, reason))
    return out


def _read_batches(source: Source, columns: list[str]) -> Iterator[pa.RecordBatch]:
    if isinstance(source, pd.DataFrame):
        table = pa.Table.from_pandas(source[columns], preserve_index=False)
        yield from table.to_batches(max_chunksize=BATCH_ROWS)
    else:
        yield from storage.iter_parquet(source, columns, BATCH_ROWS)


def _id_type(source: Source) -> pa.DataType:
    if isinstance(source, pd.DataFrame):
        return pa.Schema.from_pandas(source[["image_id"]], preserve_index=False).field(0).type
    fs, path = storage.filesystem(source)
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        return pq.ParquetFile(fh).schema_arrow.field("image_id").type


# Rows per row group: a writer holds one row group per asset (~45 at once), so they are kept
# small: 16k scalar rows, fewer where rows are big (vectors, 2 KB crop hashes).
_ROW_GROUPS = {EMBEDDINGS: 4096, OBJECT_EMBEDDINGS: 8192}
SCALAR_ROW_GROUP = 16_384


class _Sinks:
    """One streamed Parquet writer per output asset; every one is written, empty or not."""

    def __init__(self, storage_url: str, version: str, schemas: dict[str, pa.Schema]):
        self._sinks = {
            key: storage.ParquetSink(
                storage.asset_url(storage_url, key, version),
                schema,
                _ROW_GROUPS.get(key, SCALAR_ROW_GROUP),
            )
            for key, schema in schemas.items()
        }

    def write(self, asset_key: str, columns: dict[str, pa.Array]) -> None:
        self._sinks[asset_key].write(pa.table(columns))

    def close(self) -> None:
        for sink in self._sinks.values():
            sink.close()

    def abort(self, exc: BaseException) -> None:
        for sink in self._sinks.values():
            sink.abort(exc)

    def urls(self) -> dict[str, str]:
        return {k: s.url for k, s in self._sinks.items()}

    def rows(self) -> dict[str, int]:
        return {k: s.rows for k, s in self._sinks.items()}


__all__ = ["ENGINE_VERSION", "Located", "PassResult", "Predicted", "Selection", "measure_images"]
