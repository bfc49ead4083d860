"""``dataset/manifest`` and ``dataset/data_issues``: what each image file is, read from its header.

Every image is read once here for its size and content hash; files that cannot be measured
(missing, empty, not an image, truncated, header above the pixel limit) become issue rows and are
marked ``ok = False`` so the image pass skips them while measuring everything else.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
from PIL import Image, UnidentifiedImageError

from qm_dagster import storage
from qm_dagster.dataset import Version

# Our own limit (max_pixels) is checked from the header; PIL's bomb guard would fire first.
Image.MAX_IMAGE_PIXELS = None
SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "WEBP"}
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


def inspect_bytes(data: bytes, max_pixels: int) -> FileFacts:
    """Size, hash and header of an image file's bytes, and why it cannot be measured, if so."""
    facts = FileFacts(bytes=len(data))
    if not data:
        facts.problem = "empty file (0 bytes)"
        return facts
    facts.content_hash = hashlib.blake2b(data, digest_size=16).hexdigest()
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
    else:
        facts.problem = _truncation(img, data)
    return facts


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


def _inspect_url(url: str, max_pixels: int) -> FileFacts:
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        return FileFacts(problem="file not found")
    except OSError as exc:
        return FileFacts(problem=f"cannot read: {exc}")
    return inspect_bytes(data, max_pixels)


@dataclass
class Manifest:
    images: pd.DataFrame
    issues: pd.DataFrame


def build_manifest(
    version: Version, max_pixels: int, threads: int = 8, table: pd.DataFrame | None = None
) -> Manifest:
    """Inspect every data point of ``version`` (I/O bound, so on threads).

    ``table`` is the version's image table when the caller has already parsed it.
    """
    table = version.image_table() if table is None else table
    base = version.images_url
    urls = [storage.join(base, name) for name in table.file_name]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        facts = list(pool.map(lambda u: _inspect_url(u, max_pixels), urls))
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
