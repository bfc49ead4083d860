"""Readers of box files: each returns ``{image stem: [Box, ...]}`` in absolute xywh pixels."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

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


def read_names(path: str | None) -> list[str] | None:
    """Class names, one per line (YOLO ``obj.names`` / ``voc.names``); line i is class id i."""
    if path is None:
        return None
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


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
) -> dict[str, list[Box]]:
    """Per-image txt files: ``class [score] <4 numbers>``.

    ``layout``: ``xyxy`` / ``xywh`` (absolute pixels) or ``yolo`` (relative centre x, y, w, h,
    which needs the image ``sizes``). Class tokens are names, or ids when ``names`` is given.
    """
    out: dict[str, list[Box]] = {}
    for path in sorted(Path(folder).glob("*.txt")):
        boxes = []
        for n, raw in enumerate(path.read_text().splitlines(), start=1):
            tokens = raw.split()
            if not tokens:
                continue
            need = 6 if with_score else 5
            if len(tokens) < need:
                raise DatasetError(str(path), f"line {n}", f"expected {need} fields, got {raw!r}")
            # class names may contain spaces only in name-mode files; numbers are the last fields
            nums = _floats(tokens[-(need - 1) :], str(path), n)
            cls = _class_name(" ".join(tokens[: len(tokens) - (need - 1)]), names, str(path), n)
            score = nums.pop(0) if with_score else None
            box = _to_xywh(cls, nums, layout, score, sizes, path, n)
            if box.w < 0 or box.h < 0:
                raise DatasetError(
                    str(path), f"line {n}", f"negative box size {box.w} x {box.h} in {raw!r}"
                )
            boxes.append(box)
        out[path.stem] = boxes
    return out


def _to_xywh(cls, nums, layout, score, sizes, path, n) -> Box:
    a, b, c, d = nums
    if layout == "xyxy":
        return Box(cls, a, b, c - a, d - b, score)
    if layout == "xywh":
        return Box(cls, a, b, c, d, score)
    if layout == "yolo":
        if sizes is None or path.stem not in sizes:
            raise DatasetError(
                str(path), f"line {n}", "relative YOLO boxes need the image; none found"
            )
        w_img, h_img = sizes[path.stem]
        return Box(cls, (a - c / 2) * w_img, (b - d / 2) * h_img, c * w_img, d * h_img, score)
    raise ValueError(f"unknown box layout {layout!r}")
