"""Build a version (COCO annotations + predictions + images) from VOC, YOLO, txt or COCO input.

Tolerant by default: a label file without an image, a line that cannot be read, a class id
outside the names, relative coordinates outside [0, 1] are left out and reported (the import's
summary, and ``import_issues.json``, which become ``dataset/data_issues`` rows of the version);
``strict`` fails on the first instead."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from qm_dagster.coco import parse_instances, parse_results
from qm_dagster.dataset import IMAGE_EXTENSIONS, Version
from qm_dagster.errors import QmError
from qm_dagster.importers.readers import (
    Box,
    Issue,
    Issues,
    read_names,
    read_txt_dir,
    read_voc_dir,
)
from qm_dagster.importers.tools import read_cvat, read_fiftyone, read_label_studio
from qm_dagster.layout import VersionWriter

LABEL_FORMATS = (
    "voc",
    "yolo",
    "txt-xyxy",
    "txt-xywh",
    "cvat",
    "labelstudio",
    "fiftyone",
    "coco",
    "none",
)
PREDICTION_FORMATS = ("txt-xyxy", "txt-xywh", "yolo", "fiftyone", "coco")


@dataclass
class ImportSpec:
    """Where the source files are and what format they are in."""

    images: str
    format: str = "none"
    labels: str | None = None
    names: str | None = None
    predictions: str | None = None
    pred_format: str | None = None
    pred_names: str | None = None
    model: str = "model"
    strict: bool = False  # fail on the first problem instead of leaving it out and reporting it


def _image_files(folder: str) -> list[str]:
    base = Path(folder)
    if not base.is_dir():
        raise QmError(f"images folder {folder} does not exist")
    return sorted(
        p.relative_to(base).as_posix()
        for p in base.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            return int(img.width), int(img.height)
    except (OSError, UnidentifiedImageError):
        return None


def _read_boxes(
    kind: str, source: str, with_score: bool, names, sizes, issues: Issues
) -> tuple[dict[str, list[Box]], list[str] | None]:
    """The boxes by image stem, and the class names of an annotation tool's export (in its
    order; None for the formats without them)."""
    if kind == "voc":
        return read_voc_dir(source), None
    if kind == "cvat":
        return read_cvat(source, issues)
    if kind == "labelstudio":
        return read_label_studio(source, sizes, issues)
    if kind == "fiftyone":
        return read_fiftyone(source, sizes, issues)
    layout = {"txt-xyxy": "xyxy", "txt-xywh": "xywh", "yolo": "yolo"}[kind]
    return read_txt_dir(source, layout, with_score, names, sizes, issues), None


def _without_orphans(
    boxes: dict[str, list[Box]] | None, stems: dict[str, int], issues: Issues
) -> dict[str, list[Box]] | None:
    """``boxes`` of the stems that have an image; the others reported (or raised: strict)."""
    if boxes is None:
        return None
    for stem in sorted(set(boxes) - set(stems)):
        issues.add(Issue(stem, "", f"label file {stem}.* has no image named {stem}.*"))
    return {stem: b for stem, b in boxes.items() if stem in stems}


def _polygon_area(polygon: list[float], size: tuple[int, int] | None) -> float:
    """COCO's area of a polygon: its mask's pixel count (pycocotools), at the image size."""
    if size is None:
        return 0.0
    w, h = size
    return float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))))


def annotation_record(
    box: Box, ann_id: int, image_id: int, cat_id: dict[str, int], size: tuple[int, int] | None
) -> dict[str, Any]:
    """The COCO annotation of one box (a polygon's: its segmentation and pycocotools area)."""
    ann = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_id[box.category],
        "bbox": [box.x, box.y, box.w, box.h],
        "area": box.w * box.h,
        "iscrowd": 0,
    }
    if box.polygon is not None:
        ann["segmentation"] = [box.polygon]
        ann["area"] = _polygon_area(box.polygon, size)
    if box.difficult:
        ann["difficult"] = 1
    return ann


def _coco_from_boxes(
    files: list[str],
    sizes,
    gt: dict[str, list[Box]] | None,
    dets: dict[str, list[Box]] | None,
    names: list[str] | None,
    issues: Issues | None = None,
):
    stems = {
        Path(f).with_suffix("").as_posix().rsplit("/", 1)[-1]: i + 1 for i, f in enumerate(files)
    }
    issues = issues if issues is not None else Issues(strict=True)
    gt, dets = _without_orphans(gt, stems, issues), _without_orphans(dets, stems, issues)
    classes = list(names or [])
    for source in (gt or {}), (dets or {}):
        for boxes in source.values():
            classes += sorted({b.category for b in boxes} - set(classes))
    cat_id = {name: i + 1 for i, name in enumerate(classes)}
    images = []
    for i, f in enumerate(files):
        rec: dict[str, Any] = {"id": i + 1, "file_name": f}
        size = sizes.get(Path(f).stem)
        if size:
            rec["width"], rec["height"] = size
        images.append(rec)
    annotations = []
    for stem, boxes in sorted((gt or {}).items()):
        for b in boxes:
            ann = annotation_record(b, len(annotations) + 1, stems[stem], cat_id, sizes.get(stem))
            annotations.append(ann)
    results = [
        {
            "image_id": stems[stem],
            "category_id": cat_id[b.category],
            "bbox": [b.x, b.y, b.w, b.h],
            "score": b.score,
        }
        for stem, boxes in sorted((dets or {}).items())
        for b in boxes
    ]
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for n, i in cat_id.items()],
    }
    return coco, results


def import_version(
    spec: ImportSpec,
    root: str,
    name: str,
    kind: str | None = None,
    reference: str | None = None,
    description: str | None = None,
    overwrite: bool = False,
) -> Version:
    """Convert ``spec`` into ``<root>/<name>/`` and commit it (``version.json`` written last)."""
    if spec.format not in LABEL_FORMATS:
        raise QmError(f"label format {spec.format!r} is not one of {LABEL_FORMATS}")
    if spec.predictions and spec.pred_format not in PREDICTION_FORMATS:
        raise QmError(f"prediction format {spec.pred_format!r} is not one of {PREDICTION_FORMATS}")
    if spec.predictions and spec.format == "none":
        raise QmError(
            "predictions refer to COCO image ids: import them with labels (or --format coco)"
        )
    writer = VersionWriter(root, name, overwrite=overwrite)
    base = Path(spec.images)
    files = _image_files(spec.images)
    sizes = {Path(f).stem: s for f in files if (s := image_size(base / f)) is not None}
    names = read_names(spec.names)
    issues = Issues(spec.strict)
    if spec.format == "coco":
        if not spec.labels:
            raise QmError("--format coco needs --labels pointing at the instances JSON")
        coco = json.loads(Path(spec.labels).read_text())
        tables = parse_instances(coco, spec.labels)
        results = json.loads(Path(spec.predictions).read_text()) if spec.predictions else None
        if results is not None:
            parse_results(results, spec.predictions, tables.images.image_id, tables.categories)
        files = [f for f in tables.images.file_name if (base / f).is_file()]
    else:
        gt = None
        if spec.format != "none":
            gt, listed = _read_boxes(spec.format, spec.labels, False, names, sizes, issues)
            names = names or listed
        dets = None
        if spec.predictions:
            pred_names = read_names(spec.pred_names) if spec.pred_names else names
            dets, _ = _read_boxes(
                spec.pred_format, spec.predictions, True, pred_names, sizes, issues
            )
        coco, results = _coco_from_boxes(files, sizes, gt, dets, names, issues)
        if spec.format == "none":
            coco = None
    for f in files:
        writer.add_image(f, (base / f).read_bytes())
    if coco is not None:
        writer.write_annotations(coco)
    if spec.predictions and results is not None:
        writer.write_predictions(spec.model, results)
    if issues.items:
        writer.write_import_issues([vars(issue) for issue in issues.items])
    return writer.commit(kind=kind, reference=reference, description=description)
