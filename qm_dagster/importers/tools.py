"""Exports of the annotation tools teams use most: CVAT for images 1.1 (XML) and Label Studio
(JSON export). Each reader returns ``{image stem: [Box, ...]}`` in absolute pixels (boxes, and
polygons with their box) and the class names in the tool's own order; shapes we do not import
(CVAT polylines, points, masks, ellipses; rotated boxes) are reported in ``issues``."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

from qm_dagster.errors import DatasetError
from qm_dagster.importers.readers import Box, Issue, Issues, polygon_box

CVAT_SKIPPED = ("polyline", "points", "mask", "ellipse", "cuboid", "skeleton")


def _stem(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).stem


def _number(value: str | None, file: str, where: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise DatasetError(file, where, f"expected a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise DatasetError(file, where, f"expected a finite number, got {value!r}")
    return number


def read_cvat(path: str, issues: Issues) -> tuple[dict[str, list[Box]], list[str]]:
    """CVAT for images 1.1: ``<image name>`` with ``<box label xtl ytl xbr ybr>`` and
    ``<polygon label points="x,y;x,y;...">``; the labels of ``<meta>`` in their order."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DatasetError(path, "", f"not a readable XML file: {exc}") from exc
    names = [(n.text or "").strip() for n in root.iterfind("meta//labels/label/name")]
    out: dict[str, list[Box]] = {}
    for i, image in enumerate(root.iter("image")):
        name = image.get("name")
        if not name:
            issues.add(Issue(path, f"image[{i}]", "no name attribute: skipped"))
            continue
        boxes = out.setdefault(_stem(name), [])
        for j, shape in enumerate(image):
            where = f"image[{i}] ({name}) {shape.tag}[{j}]"
            try:
                box = _cvat_shape(shape, path, where)
            except DatasetError as exc:
                issues.add(Issue(path, where, f"{exc.problem}: shape skipped"))
                continue
            if box is None:
                issues.add(Issue(path, where, f"{shape.tag} shapes are not imported"))
            else:
                boxes.append(box)
    return out, names


def _cvat_shape(shape: ET.Element, file: str, where: str) -> Box | None:
    label = shape.get("label")
    if shape.tag in ("box", "polygon") and not label:
        raise DatasetError(file, where, "no label")
    if shape.tag == "box":
        if float(shape.get("rotation") or 0) != 0:
            raise DatasetError(file, where, "a rotated box")
        x1, y1, x2, y2 = (_number(shape.get(k), file, where) for k in ("xtl", "ytl", "xbr", "ybr"))
        if x2 < x1 or y2 < y1:
            raise DatasetError(file, where, f"max < min in {x1, y1, x2, y2}")
        return Box(label, x1, y1, x2 - x1, y2 - y1)
    if shape.tag == "polygon":
        pairs = [p.split(",") for p in (shape.get("points") or "").split(";") if p.strip()]
        if len(pairs) < 3 or any(len(p) != 2 for p in pairs):
            raise DatasetError(file, where, "points must be 3 or more 'x,y' pairs")
        return polygon_box(label, [_number(v, file, where) for p in pairs for v in p])
    if shape.tag in CVAT_SKIPPED:
        return None
    raise DatasetError(file, where, f"unknown shape <{shape.tag}>")


def read_label_studio(
    path: str, sizes: dict[str, tuple[int, int]], issues: Issues
) -> tuple[dict[str, list[Box]], list[str]]:
    """Label Studio's JSON export: per task, the first annotation not cancelled; its
    ``rectanglelabels`` and ``polygonlabels`` results, in percent of the image's original size
    (the result's ``original_width``/``original_height``, else the image file's, ``sizes``)."""
    try:
        tasks = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(path, "", f"not a readable JSON file: {exc}") from exc
    if not isinstance(tasks, list):
        raise DatasetError(path, "", "expected the export's list of tasks")
    out: dict[str, list[Box]] = {}
    names: list[str] = []
    for i, task in enumerate(tasks):
        image = ((task or {}).get("data") or {}).get("image") if isinstance(task, dict) else None
        if not isinstance(image, str):
            issues.add(Issue(path, f"[{i}].data.image", "no image: task skipped"))
            continue
        stem = _upload_stem(_stem(image), sizes)
        kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        boxes = out.setdefault(stem, [])
        for j, result in enumerate(kept[0].get("result") or [] if kept else []):
            where = f"[{i}].annotations[0].result[{j}]"
            try:
                box = _ls_result(result, sizes.get(stem), path, where)
            except DatasetError as exc:
                issues.add(Issue(path, where, f"{exc.problem}: result skipped"))
                continue
            if box is not None:
                boxes.append(box)
                names += [] if box.category in names else [box.category]
    return out, names


def _upload_stem(stem: str, sizes: dict[str, tuple[int, int]]) -> str:
    """Label Studio stores uploads as ``<8 hex>-<file name>``: the file's own stem when that
    names an image and the whole does not."""
    head, sep, rest = stem.partition("-")
    if stem not in sizes and sep and len(head) == 8 and rest in sizes:
        return rest
    return stem


def _ls_result(result: dict, size, file: str, where: str) -> Box | None:
    kind = result.get("type")
    if kind not in ("rectanglelabels", "polygonlabels"):
        return None  # choices, text areas, keypoints: not objects
    value = result.get("value") or {}
    labels = value.get(kind) or []
    if len(labels) != 1:
        raise DatasetError(file, where, f"expected one label, got {labels}")
    width = result.get("original_width") or (size[0] if size else None)
    height = result.get("original_height") or (size[1] if size else None)
    if not width or not height:
        raise DatasetError(file, where, "no original_width/height and no image file")
    sx, sy = _number(width, file, where) / 100, _number(height, file, where) / 100
    if kind == "rectanglelabels":
        if _number(value.get("rotation") or 0, file, where) != 0:
            raise DatasetError(file, where, "a rotated rectangle")
        x, y, w, h = (_number(value.get(k), file, where) for k in ("x", "y", "width", "height"))
        return Box(labels[0], x * sx, y * sy, w * sx, h * sy)
    points = value.get("points") or []
    if len(points) < 3 or any(not isinstance(p, list) or len(p) != 2 for p in points):
        raise DatasetError(file, where, "points must be 3 or more [x, y] pairs")
    polygon = [
        _number(v, file, where) * (sx if k == 0 else sy) for p in points for k, v in enumerate(p)
    ]
    return polygon_box(labels[0], polygon)


def read_fiftyone(
    path: str, sizes: dict[str, tuple[int, int]], issues: Issues
) -> tuple[dict[str, list[Box]], list[str]]:
    """FiftyOne's image detection dataset (``labels.json``: ``classes`` and ``labels`` by image
    path without its extension, each detection a ``label`` (index into ``classes``, or a name),
    a ``bounding_box`` ``[x, y, w, h]`` relative to the image and an optional ``confidence``),
    in absolute pixels of the image file's size (``sizes``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(path, "", f"not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise DatasetError(path, "", "expected an object with a 'labels' mapping (labels.json)")
    names = [str(c) for c in data.get("classes") or []]
    out: dict[str, list[Box]] = {}
    for uuid, detections in data["labels"].items():
        stem = _stem(uuid)
        boxes = out.setdefault(stem, [])
        size = sizes.get(stem)
        if size is None and detections:
            reason = f"no readable image of that name: its {len(detections)} detections skipped"
            issues.add(Issue(path, f"labels[{uuid!r}]", reason))
            continue
        for j, det in enumerate(detections or []):
            where = f"labels[{uuid!r}][{j}]"
            try:
                boxes.append(_fiftyone_box(det, names, size, path, where))
            except DatasetError as exc:
                issues.add(Issue(path, where, f"{exc.problem}: detection skipped"))
    return out, names


def _fiftyone_box(det, names: list[str], size, file: str, where: str) -> Box:
    if not isinstance(det, dict) or "label" not in det or "bounding_box" not in det:
        raise DatasetError(file, where, "expected {'label', 'bounding_box', ...}")
    label = det["label"]
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(names):
            raise DatasetError(file, where, f"class index {label} outside classes")
        label = names[label]
    bbox = det["bounding_box"]
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DatasetError(file, where, f"bounding_box must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (_number(v, file, where) for v in bbox)
    if w < 0 or h < 0:  # a box reaching past the border is kept, as COCO keeps it
        raise DatasetError(file, where, f"bounding_box {bbox} has a negative width or height")
    score = det.get("confidence")
    score = None if score is None else _number(score, file, where)
    width, height = size
    return Box(str(label), x * width, y * height, w * width, h * height, score=score)
