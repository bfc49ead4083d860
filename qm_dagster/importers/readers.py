"""Readers of box files: each returns ``{image stem: [Box, ...]}`` in absolute xywh pixels.

Tolerant by default: a line or file that cannot be read is left out and recorded in the
``Issues`` given (``Issue``: which file, which line, what is wrong), the rest read; with strict
``Issues`` (or none given) the first such error raises ``DatasetError`` (``--strict``).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import yaml

from qm_dagster.errors import DatasetError


@dataclass
class Box:
    category: str
    x: float
    y: float
    w: float
    h: float
    score: float | None = None
    difficult: bool = False
    polygon: list[float] | None = None  # absolute x1, y1, x2, y2, ... (YOLO-seg)


@dataclass(frozen=True)
class Issue:
    """Something of the source left out of (or noted about) an import."""

    file: str
    where: str
    reason: str
    severity: str = "error"  # error: data left out; info: imported as it is


class Issues:
    """What an import left out of (or noted about) its source; ``strict``: an error raises."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.items: list[Issue] = []

    def add(self, issue: Issue) -> None:
        if self.strict and issue.severity == "error":
            raise DatasetError(issue.file, issue.where, issue.reason)
        self.items.append(issue)


def read_names(path: str | None) -> list[str] | None:
    """Class names: one per line (YOLO ``obj.names`` / ``voc.names``; line i is class id i), or
    a YAML file's ``names`` (a list, or a mapping of class id to name, as Ultralytics ships)."""
    if path is None:
        return None
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise DatasetError(path, "", f"not valid YAML: {exc}") from exc
        return yaml_names(data, path)
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def yaml_names(data: object, file: str) -> list[str]:
    """``names`` of a dataset YAML: a list, or ``{id: name}`` with ids 0 .. n-1."""
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list) and all(isinstance(n, str | int) for n in names):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError) as exc:
            raise DatasetError(file, "names", "class ids must be integers") from exc
        if ids != list(range(len(ids))):
            raise DatasetError(file, "names", f"class ids must be 0 .. {len(ids) - 1}, got {ids}")
        by_id = {int(k): str(v) for k, v in names.items()}
        return [by_id[i] for i in ids]
    raise DatasetError(file, "names", "expected a list of class names or {id: name}")


def _class_name(token: str, names: list[str] | None, file: str, line: int) -> str:
    if names is None:
        return token
    try:
        index = int(token)
        if index < 0:
            raise IndexError(index)  # Python would count from the end: not a class id
        return names[index]
    except (ValueError, IndexError) as exc:
        raise DatasetError(
            file,
            f"line {line}",
            f"class {token!r} is not an index into the names file ({len(names)} names)",
        ) from exc


def _floats(tokens: list[str], file: str, line: int) -> list[float]:
    """The tokens as finite numbers (``nan``, ``inf`` and overflowing ones are errors)."""
    try:
        values = [float(t) for t in tokens]
    except ValueError as exc:
        raise DatasetError(
            file, f"line {line}", f"expected numbers, got {' '.join(tokens)!r}"
        ) from exc
    if not all(math.isfinite(v) for v in values):
        raise DatasetError(
            file, f"line {line}", f"expected finite numbers, got {' '.join(tokens)!r}"
        )
    return values


def read_voc_dir(folder: str) -> dict[str, list[Box]]:
    """Pascal VOC xml files: ``<object><name>, <difficult>, <bndbox>xmin ymin xmax ymax``."""
    out: dict[str, list[Box]] = {}
    for path in sorted(Path(folder).glob("*.xml")):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise DatasetError(str(path), "", f"not valid XML: {exc}") from exc
        boxes = []
        for i, obj in enumerate(root.iter("object")):
            where = f"object[{i}]"
            name = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            if not name or bb is None:
                raise DatasetError(str(path), where, "needs <name> and <bndbox>")
            try:
                x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError) as exc:
                raise DatasetError(
                    str(path), f"{where}.bndbox", "xmin/ymin/xmax/ymax must be numbers"
                ) from exc
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                raise DatasetError(
                    str(path), f"{where}.bndbox", f"coordinates must be finite: {x1, y1, x2, y2}"
                )
            if x2 < x1 or y2 < y1:
                raise DatasetError(str(path), f"{where}.bndbox", f"max < min in {x1, y1, x2, y2}")
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            boxes.append(Box(name, x1, y1, x2 - x1, y2 - y1, difficult=difficult))
        out[path.stem] = boxes
    return out


def read_txt_dir(
    folder: str,
    layout: str,
    with_score: bool,
    names: list[str] | None = None,
    sizes: dict[str, tuple[int, int]] | None = None,
    issues: Issues | None = None,
) -> dict[str, list[Box]]:
    """Per-image txt files: ``class [score] <4 numbers>``.

    ``layout``: ``xyxy`` / ``xywh`` (absolute pixels) or ``yolo`` (relative centre x, y, w, h,
    which needs the image ``sizes``; a label line of ``class x1 y1 x2 y2 x3 y3 ...`` is a
    YOLO-seg polygon). Class tokens are names, or ids when ``names`` is given.
    """
    issues = issues if issues is not None else Issues(strict=True)
    out: dict[str, list[Box]] = {}
    for path in sorted(Path(folder).glob("*.txt")):
        size = (sizes or {}).get(path.stem)
        if layout == "yolo" and size is None:
            issues.add(Issue(str(path), "", "label file without an image: skipped"))
            continue
        out[path.stem] = read_txt_file(path, layout, with_score, names, size, issues)
    return out


def read_txt_file(
    path: Path,
    layout: str,
    with_score: bool,
    names: list[str] | None,
    size: tuple[int, int] | None,
    issues: Issues,
) -> list[Box]:
    """The boxes of one txt file (see ``read_txt_dir``); an empty file is an image without
    objects (noted as such)."""
    lines = path.read_text().splitlines()
    if not any(line.strip() for line in lines):
        issues.add(Issue(str(path), "", "empty label file: no objects", "info"))
        return []
    boxes = []
    for n, raw in enumerate(lines, start=1):
        if raw.strip():
            try:
                boxes.append(_line_box(raw, layout, with_score, names, size, str(path), n))
            except DatasetError as exc:
                if issues.strict:
                    raise
                issues.add(Issue(str(path), f"line {n}", f"{exc.problem}: line skipped"))
    return boxes


def _line_box(raw, layout, with_score, names, size, file: str, n: int) -> Box:
    tokens = raw.split()
    need = 6 if with_score else 5
    if len(tokens) < need:
        raise DatasetError(file, f"line {n}", f"expected {need} fields, got {raw!r}")
    if layout == "yolo" and not with_score and len(tokens) > need:
        return _polygon_box(tokens, names, size, file, n)
    # class names may contain spaces only in name-mode files; numbers are the last fields
    nums = _floats(tokens[-(need - 1) :], file, n)
    cls = _class_name(" ".join(tokens[: len(tokens) - (need - 1)]), names, file, n)
    score = nums.pop(0) if with_score else None
    if layout == "yolo":
        _relative(nums, file, n)
    box = _to_xywh(cls, nums, layout, score, size, file, n)
    if box.w < 0 or box.h < 0:
        raise DatasetError(file, f"line {n}", f"negative box size {box.w} x {box.h} in {raw!r}")
    return box


def _relative(values: list[float], file: str, n: int) -> None:
    """YOLO coordinates are shares of the image side: outside [0, 1] they are not."""
    outside = [v for v in values if not 0.0 <= v <= 1.0]
    if outside:
        raise DatasetError(file, f"line {n}", f"coordinates outside [0, 1]: {outside}")


def _polygon_box(tokens, names, size, file: str, n: int) -> Box:
    """A YOLO-seg line ``class x1 y1 x2 y2 ...`` (relative): the polygon in pixels, its box."""
    nums = _floats(tokens[1:], file, n)
    if len(nums) % 2 or len(nums) < 6:
        raise DatasetError(
            file, f"line {n}", f"a polygon needs 3 or more x y pairs, got {len(nums)} numbers"
        )
    _relative(nums, file, n)
    cls = _class_name(tokens[0], names, file, n)
    w_img, h_img = size
    return polygon_box(cls, [v * (w_img if i % 2 == 0 else h_img) for i, v in enumerate(nums)])


def polygon_box(category: str, polygon: list[float]) -> Box:
    """A polygon (absolute x1, y1, x2, y2, ...) with its bounding box."""
    xs, ys = polygon[0::2], polygon[1::2]
    x, y = min(xs), min(ys)
    return Box(category, x, y, max(xs) - x, max(ys) - y, polygon=polygon)


def _to_xywh(cls, nums, layout, score, size, file: str, n: int) -> Box:
    a, b, c, d = nums
    if layout == "xyxy":
        return Box(cls, a, b, c - a, d - b, score)
    if layout == "xywh":
        return Box(cls, a, b, c, d, score)
    if layout == "yolo":
        if size is None:
            raise DatasetError(file, f"line {n}", "relative YOLO boxes need the image; none found")
        w_img, h_img = size
        return Box(cls, (a - c / 2) * w_img, (b - d / 2) * h_img, c * w_img, d * h_img, score)
    raise ValueError(f"unknown box layout {layout!r}")
