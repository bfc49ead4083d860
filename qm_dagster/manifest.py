"""``dataset/manifest`` and ``dataset/data_issues``: what each image file is, read from its header.

Every image is read once here for its size and content hash; files that cannot be measured
(missing, empty, not an image, truncated, header above the pixel limit) become issue rows and are
marked ``ok = False`` so the image pass skips them while measuring everything else.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
from PIL import Image, UnidentifiedImageError

from qm_dagster import storage
from qm_dagster.coco import Quarantined
from qm_dagster.dataset import Version, listed_images
from qm_dagster.errors import StorageError
from qm_dagster.passes.pool import chunked, process_pool

# Our own limit (max_pixels) is checked from the header; PIL's bomb guard would fire first.
Image.MAX_IMAGE_PIXELS = None
INSPECT_CHUNK = 256  # files per process task: ~50 ms of work against ~1 ms of pickling
SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "GIF"}
MANIFEST_COLUMNS = [
    "image_id",
    "file_name",
    "url",
    "bytes",
    "content_hash",
    "width",
    "height",
    "coco_width",
    "coco_height",
    "format",
    "video_id",
    "frame_index",
    "ok",
]
ISSUE_COLUMNS = ["image_id", "file_name", "stage", "severity", "reason"]


@dataclass
class FileFacts:
    """What reading one file told us; ``problem`` set means it will not be decoded."""

    bytes: int | None = None
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    problem: str | None = None


def inspect_bytes(data: bytes, max_pixels: int, tail: bytes | None = None) -> FileFacts:
    """Size, hash and header of an image file's bytes, and why it cannot be measured, if so.

    With ``tail`` (the file's last bytes), ``data`` may be just the file's beginning: enough for
    the header and the JPEG end-marker check (PNG integrity is then left to the decoder).
    """
    facts = FileFacts(bytes=len(data))
    if not data:
        facts.problem = "empty file (0 bytes)"
        return facts
    facts.content_hash = storage.content_digest(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        facts.problem = "not an image: no known image header"
        return facts
    except Exception as exc:
        facts.problem = f"unreadable image header: {exc}"
        return facts
    facts.width, facts.height, facts.format = int(img.width), int(img.height), img.format
    if img.format not in SUPPORTED_FORMATS:
        facts.problem = f"unsupported image format {img.format}"
    elif facts.width * facts.height > max_pixels:
        facts.problem = (
            f"header claims {facts.width}x{facts.height} = {facts.width * facts.height} pixels, "
            f"above the max_pixels limit {max_pixels}; not decoded"
        )
    elif tail is not None:
        facts.problem = _jpeg_tail_problem(img, tail)
    else:
        facts.problem = _truncation(img, data)
    return facts


def _jpeg_tail_problem(img: Image.Image, tail: bytes) -> str | None:
    if img.format in ("JPEG", "MPO") and not tail.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        return "truncated JPEG: no end-of-image marker"
    return None


def _truncation(img: Image.Image, data: bytes) -> str | None:
    """Detect truncated JPEG/PNG files, which OpenCV would decode into a gray-padded image."""
    if img.format in ("JPEG", "MPO"):
        if data.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
            return None
        try:  # no end marker at the end: confirm with a strict full decode (rare path)
            img.load()
        except OSError as exc:
            return f"truncated JPEG: {exc}"
        return None
    if img.format == "PNG":
        try:
            img.verify()
        except Exception as exc:
            return f"corrupt or truncated PNG: {exc}"
    return None


HEADER_BYTES = 256 * 1024  # enough for the size markers of any JPEG/PNG/BMP/WebP header
TAIL_BYTES = 64
OUTSIDE = "a symbolic link to a file outside the version's images folder (not read)"


def content_from_etag(etag: str, size: int) -> str:
    """The content id of an object the store identifies by ETag (same upload, same bytes)."""
    token = f"etag:{etag.strip(chr(34))}:{size}".encode()
    return hashlib.blake2b(token, digest_size=16).hexdigest()


def _store_etag(info: dict) -> str | None:
    etag = info.get("ETag") or info.get("etag")
    return str(etag) if etag else None


def _escapes(path: str, root: str) -> bool:
    """Whether the local ``path``, links resolved, lies outside the folder ``root`` (resolved):
    a symbolic link in a version must not make the workers read other files of the machine."""
    real = os.path.realpath(path)
    return os.path.commonpath([real, root]) != root


def _inspect_url(url: str, max_pixels: int, root: str | None = None) -> FileFacts:
    """The facts of one file; ``root``: the resolved local images folder it must stay in. A
    store that does not answer raises ``StorageError`` (a failed step, not a data issue)."""
    try:
        return _inspect(url, max_pixels, root)
    except FileNotFoundError:
        return FileFacts(problem="file not found")
    except Exception as exc:
        if storage.unavailable(exc):
            raise StorageError.unanswered(url, exc) from exc
        if isinstance(exc, OSError):
            return FileFacts(problem=f"cannot read: {exc}")
        raise


def _inspect(url: str, max_pixels: int, root: str | None) -> FileFacts:
    fs, path = storage.filesystem(url)
    if storage.is_local(fs):
        if root is not None and _escapes(path, root):
            return FileFacts(problem=OUTSIDE)
        return inspect_bytes(fs.cat_file(path), max_pixels)
    info = fs.info(path)
    etag, size = _store_etag(info), int(info.get("size") or 0)
    if etag is None or size <= HEADER_BYTES:
        return inspect_bytes(fs.cat_file(path), max_pixels)
    return _inspect_remote(fs, path, size, etag, max_pixels)


def _inspect_remote(fs, path: str, size: int, etag: str, max_pixels: int) -> FileFacts:
    """An object with an ETag: its header and last bytes only (two range reads), identified by
    the ETag, so the image pass is the one full read of its bytes."""
    head = fs.cat_file(path, start=0, end=HEADER_BYTES)
    tail = fs.cat_file(path, start=size - TAIL_BYTES, end=size)
    facts = inspect_bytes(head, max_pixels, tail=tail)
    if facts.problem and facts.problem.startswith(("truncated", "corrupt", "unreadable")):
        facts = inspect_bytes(fs.cat_file(path), max_pixels)  # the header alone was not enough
    facts.bytes = size
    facts.content_hash = content_from_etag(etag, size)
    return facts


IO_OVERLAP = 2  # inspecting processes per worker for local files (see manifest_batches)


@dataclass
class Manifest:
    images: pd.DataFrame
    issues: pd.DataFrame


def manifest_batches(
    version: Version,
    max_pixels: int,
    threads: int = 8,
    table: pd.DataFrame | None = None,
    rows: int = 4096,
    workers: int = 1,
) -> Iterator[Manifest]:
    """Inspect every data point of ``version``, ``rows`` at a time.

    ``table`` is the version's image table when the caller has already parsed it; without
    annotations the image folder is walked a folder at a time. Memory is bounded by a batch.
    Files in an object store are I/O bound: ``threads`` inspect them. Local files are CPU bound
    (hash and header parse hold the GIL: 8 threads were slower than 1, measured at 12k files),
    so with ``workers > 1`` processes inspect them instead, ``IO_OVERLAP`` per worker: every
    byte is read, and on a cold page cache a process waits on the disk (100k files, 5.6 GB,
    2 cores: 2 processes 41.1 s, 4 31.3 s, 8 32.0 s; from the page cache 15.3 s and 14.4 s).
    """
    base = version.images_url
    if table is None and version.has_annotations():
        table = version.image_table()
    skipped: list[tuple[str, str]] = []  # filled by the listing as it walks
    batches = (
        (table.iloc[i : i + rows] for i in range(0, len(table), rows))
        if table is not None
        else version.image_batches(rows, skipped)
    )
    processes = workers > 1 and storage.is_local(storage.filesystem(base)[0])
    pool = process_pool(IO_OVERLAP * workers) if processes else ThreadPoolExecutor(max(1, threads))
    chunk = INSPECT_CHUNK if processes else 1  # a thread per file: its wait is the store's
    fs, base_path = storage.filesystem(base)
    root = os.path.realpath(base_path) if storage.is_local(fs) else None
    with pool as executor:
        # one batch ahead: the next batch is listed and inspected while this one's rows are
        # built and written (two batches of work in flight at most)
        pending = None
        for batch in batches:
            urls = [storage.join(base, name) for name in batch.file_name]
            chunks = chunked(urls, chunk)
            parts = executor.map(
                _inspect_urls, chunks, itertools.repeat(max_pixels), itertools.repeat(root)
            )
            if pending is not None:
                yield _finished(*pending, skipped)
            pending = (batch, urls, parts)
        if pending is not None:
            yield _finished(*pending, skipped)
        if skipped:  # files listed after the last image
            yield Manifest(_manifest_rows(listed_images([]), [], []).images, _skipped(skipped))


def _finished(
    batch: pd.DataFrame, urls: list[str], parts: Iterator[list[FileFacts]], skipped: list
) -> Manifest:
    """One batch's rows once its inspections are in, with what the listing skipped so far."""
    part = _manifest_rows(batch, urls, [f for part in parts for f in part])
    return Manifest(part.images, pd.concat([part.issues, _skipped(skipped)]))


def _skipped(skipped: list[tuple[str, str]]) -> pd.DataFrame:
    """Issue rows (severity info) of what the listing skipped so far; empties the list."""
    rows = [(None, path, "listing", "info", reason) for path, reason in skipped]
    skipped.clear()
    return pd.DataFrame(rows, columns=ISSUE_COLUMNS)


def _inspect_urls(urls: Sequence[str], max_pixels: int, root: str | None = None) -> list[FileFacts]:
    return [_inspect_url(url, max_pixels, root) for url in urls]


def build_manifest(
    version: Version,
    max_pixels: int,
    threads: int = 8,
    table: pd.DataFrame | None = None,
    workers: int = 1,
) -> Manifest:
    """The whole manifest in memory (small versions, tests); ``write_manifest`` streams it."""
    parts = list(manifest_batches(version, max_pixels, threads, table, workers=workers))
    if not parts:
        parts = [_manifest_rows(version.image_table().iloc[:0], [], [])]
    return Manifest(
        pd.concat([p.images for p in parts], ignore_index=True),
        pd.concat([p.issues for p in parts], ignore_index=True),
    )


@dataclass
class ManifestSummary:
    """What ``write_manifest`` wrote, for the asset's metadata."""

    rows: int = 0
    measurable: int = 0
    total_bytes: int = 0
    errors: int = 0
    warnings: int = 0
    skipped: int = 0  # files under images/ that are no image (severity info)
    preview: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ISSUE_COLUMNS))


def write_manifest(
    version: Version,
    max_pixels: int,
    images_url: str,
    issues_url: str,
    threads: int = 8,
    table: pd.DataFrame | None = None,
    workers: int = 1,
    quarantined: Sequence[Quarantined] = (),
) -> ManifestSummary:
    """Stream the manifest and the issues of ``version`` to two Parquet files, atomically;
    ``quarantined`` annotation records are issues too."""
    import pyarrow as pa

    if table is None and version.has_annotations():
        table = version.image_table()
    # COCO ids are integers; without annotations the relative path is the id
    ids = pa.int64() if table is not None else pa.string()
    empty = _manifest_rows((table if table is not None else listed_images([])).iloc[:0], [], [])
    schemas = tuple(  # with pandas' metadata, so nullable integer columns read back as Int64
        pa.Table.from_pandas(frame, schema=schema, preserve_index=False).schema
        for frame, schema in (
            (empty.images, manifest_schema(ids)),
            (empty.issues, issues_schema(ids)),
        )
    )
    summary = ManifestSummary()
    sinks = [
        storage.ParquetSink(images_url, schemas[0]),
        storage.ParquetSink(issues_url, schemas[1]),
    ]
    records = Manifest(empty.images, quarantine_issues(quarantined))
    try:
        parts = manifest_batches(version, max_pixels, threads, table, workers=workers)
        for part in itertools.chain([records], parts):
            for sink, frame, schema in zip(sinks, (part.images, part.issues), schemas, strict=True):
                sink.write(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            _count(summary, part)
    except BaseException as exc:
        for sink in sinks:
            sink.abort(exc)
        raise
    for sink in sinks:
        sink.close()
    return summary


def quarantine_issues(quarantined: Sequence[Quarantined]) -> pd.DataFrame:
    """Issue rows (each record's stage and severity: ``annotations`` / error for the records
    of annotations.json left out, ``import`` for what ``qm import`` left out of the source; the
    ``file_name`` column names the file, the reason starts with where in it)."""
    rows = [
        (
            q.image_id,
            q.file,
            q.stage,
            q.severity,
            (f"{q.where}" if q.where else "")
            + ("" if q.record_id is None else f" (id {q.record_id})")
            + (": " if q.where or q.record_id is not None else "")
            + q.reason,
        )
        for q in quarantined
    ]
    return pd.DataFrame(rows, columns=ISSUE_COLUMNS)


def manifest_schema(id_type):
    """The Arrow schema of ``dataset/manifest`` (``id_type``: int64 for COCO, else string)."""
    import pyarrow as pa

    text, number = pa.string(), pa.int64()
    types = {
        "image_id": id_type,
        "file_name": text,
        "url": text,
        "bytes": number,
        "content_hash": text,
        "width": number,
        "height": number,
        "coco_width": number,
        "coco_height": number,
        "format": text,
        "video_id": text,
        "frame_index": number,
        "ok": pa.bool_(),
    }
    return pa.schema([(c, types[c]) for c in MANIFEST_COLUMNS])


def issues_schema(id_type):
    import pyarrow as pa

    return pa.schema([("image_id", id_type)] + [(c, pa.string()) for c in ISSUE_COLUMNS[1:]])


def _count(summary: ManifestSummary, part: Manifest) -> None:
    summary.rows += len(part.images)
    summary.measurable += int(part.images.ok.sum())
    summary.total_bytes += int(part.images.bytes.fillna(0).sum())
    summary.errors += int((part.issues.severity == "error").sum())
    summary.warnings += int((part.issues.severity == "warning").sum())
    summary.skipped += int((part.issues.severity == "info").sum())
    if len(summary.preview) < 20 and len(part.issues):
        summary.preview = pd.concat([summary.preview, part.issues.head(20)], ignore_index=True)


def _manifest_rows(table: pd.DataFrame, urls: list[str], facts: list[FileFacts]) -> Manifest:
    images = table.assign(
        url=urls,
        bytes=[f.bytes for f in facts],
        content_hash=[f.content_hash for f in facts],
        width=[f.width for f in facts],
        height=[f.height for f in facts],
        format=[f.format for f in facts],
        ok=[f.problem is None for f in facts],
    )
    issues = [
        (iid, name, "manifest", "error", f.problem)
        for iid, name, f in zip(table.image_id, table.file_name, facts, strict=True)
        if f.problem is not None
    ]
    issues += _size_mismatches(images)
    return Manifest(
        images=images[MANIFEST_COLUMNS].astype(
            {
                "bytes": "Int64",
                "width": "Int64",
                "height": "Int64",
                "coco_width": "Int64",
                "coco_height": "Int64",
            }
        ),
        issues=pd.DataFrame(issues, columns=ISSUE_COLUMNS),
    )


def _size_mismatches(images: pd.DataFrame) -> list[tuple[object, str, str, str, str]]:
    rows = images[images.ok & images.coco_width.notna()]
    bad = rows[(rows.coco_width != rows.width) | (rows.coco_height != rows.height)]
    return [
        (
            r.image_id,
            r.file_name,
            "manifest",
            "warning",
            f"annotations.json says {int(r.coco_width)}x{int(r.coco_height)}, "
            f"the file is {r.width}x{r.height}; measured as the file is",
        )
        for r in bad.itertuples()
    ]
