"""Validate COCO instances and results JSON at the boundary and turn them into tables.

Errors name the file, the JSON path of the bad record and what is wrong; past this module the
rest of the product trusts the tables.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd
from pycocotools import mask as mask_utils

from qm_dagster.errors import DatasetError
from qm_dagster.geometry import parsed_rle

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

IMAGE_COLUMNS = ["image_id", "file_name", "coco_width", "coco_height", "video_id", "frame_index"]
ANNOTATION_COLUMNS = [
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
    "segmentation",
    "track_id",
    "keypoints",
    "annotator",
    "created",
]
PREDICTION_COLUMNS = [
    "prediction_id",
    "image_id",
    "category_id",
    "category",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "score",
    "segmentation",
    "track_id",
    "scores",
    "keypoints",
]


@dataclass
class CocoTables:
    """A validated COCO instances file as tables; ``quarantined``: the records left out
    (quarantine mode), one ``Quarantined`` each."""

    images: pd.DataFrame
    annotations: pd.DataFrame
    categories: pd.DataFrame
    quarantined: list = field(default_factory=list)


@dataclass(frozen=True)
class Quarantined:
    """A record left out of a version in quarantine mode, and why."""

    file: str
    where: str  # its JSON path
    record_id: object  # its id where it has a readable one
    reason: str
    image_id: int | None = None  # the image it belongs to, where readable
    stage: str = "annotations"  # or "import": what qm import left out of the source
    severity: str = "error"


class _Records:
    """Validation of a list's records, one at a time: in strict mode the first bad record
    raises; in quarantine mode it is set aside (``Quarantined``) and the rest go on."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.quarantined: list[Quarantined] = []

    def keep(self, parse, record: Any, where: str):
        """``parse()``'s result, or None when the record was quarantined."""
        try:
            return parse()
        except DatasetError as exc:
            if self.strict:
                raise
            fields = record if isinstance(record, dict) else {}
            rid = fields.get("id")
            image = fields.get("image_id", rid if where.startswith("images") else None)
            image = image if isinstance(image, int) and not isinstance(image, bool) else None
            self.quarantined.append(
                Quarantined(exc.file, exc.where or where, rid, exc.problem, image)
            )
            return None


def empty_annotations() -> pd.DataFrame:
    """The annotations table of an unlabeled version."""
    return pd.DataFrame(columns=ANNOTATION_COLUMNS)


def empty_categories() -> pd.DataFrame:
    return pd.DataFrame(columns=["category_id", "category", "supercategory"])


def empty_predictions() -> pd.DataFrame:
    return pd.DataFrame(columns=["model", *PREDICTION_COLUMNS])


def safe_relative_path(name: Any, file: str, where: str) -> str:
    """``name`` as a normalised relative path, or an error if it escapes its folder."""
    if not isinstance(name, str) or not name:
        raise DatasetError(file, where, f"expected a non-empty relative path string, got {name!r}")
    if _SCHEME.match(name) or name.startswith(("/", "\\")) or "\\" in name:
        raise DatasetError(file, where, f"{name!r} must be a relative path inside images/")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise DatasetError(file, where, f"{name!r} escapes the images/ folder")
    return norm


def load_json(text: bytes | str, file: str) -> Any:
    """The parsed JSON of ``file``. orjson first (2.8x faster on a 12k-image COCO file); what it
    refuses (NaN or Infinity tokens, or text that is no JSON) goes to the standard parser, which
    takes NaN as a number, so records holding one are reported one by one as before."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(file, "", f"not valid JSON: {exc}") from exc


def _need(record: Any, key: str, file: str, where: str) -> Any:
    if not isinstance(record, dict):
        raise DatasetError(file, where, f"expected an object, got {type(record).__name__}")
    if key not in record:
        raise DatasetError(file, where, f"missing required field {key!r}")
    return record[key]


def _int(value: Any, file: str, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(file, where, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise DatasetError(file, where, f"expected an integer >= {minimum}, got {value}")
    return value


def _number(value: Any, file: str, where: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DatasetError(file, where, f"expected a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise DatasetError(file, where, f"expected a number >= {minimum}, got {value}")
    return float(value)


def _list(value: Any, file: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise DatasetError(file, where, f"expected a list, got {type(value).__name__}")
    return value


def _bbox(value: Any, file: str, where: str) -> tuple[float, float, float, float]:
    box = _list(value, file, where)
    if len(box) != 4:
        raise DatasetError(file, where, f"bbox must be [x, y, width, height], got {value!r}")
    x, y = (_number(v, file, where) for v in box[:2])
    w, h = (_number(v, file, where, minimum=0) for v in box[2:])
    return x, y, w, h


def _segmentation(value: Any, file: str, where: str) -> str | None:
    """Validate polygons or RLE; returned as compact JSON so Parquet stores one column."""
    if value is None or value == []:
        return None
    if isinstance(value, list):
        for i, poly in enumerate(value):
            pw = f"{where}[{i}]"
            coords = _list(poly, file, pw)
            if len(coords) < 6 or len(coords) % 2:
                raise DatasetError(
                    file,
                    pw,
                    f"a polygon needs an even number (>= 6) of coordinates, got {len(coords)}",
                )
            for c in coords:
                _number(c, file, pw)
    elif isinstance(value, dict):
        size = _need(value, "size", file, where)
        counts = _need(value, "counts", file, where)
        if not (isinstance(size, list) and len(size) == 2):
            raise DatasetError(
                file, f"{where}.size", f"RLE size must be [height, width], got {size!r}"
            )
        for v in size:
            _int(v, file, f"{where}.size", minimum=0)
        if isinstance(counts, list):
            for v in counts:
                _int(v, file, f"{where}.counts", minimum=0)
            if sum(counts) != size[0] * size[1]:
                raise DatasetError(
                    file,
                    f"{where}.counts",
                    f"uncompressed RLE counts sum to {sum(counts)}, expected {size[0] * size[1]}",
                )
        elif not isinstance(counts, str):
            raise DatasetError(file, f"{where}.counts", "RLE counts must be a string or a list")
    else:
        raise DatasetError(file, where, "segmentation must be a polygon list or an RLE object")
    return json.dumps(value, separators=(",", ":"))


def _keypoints(value: Any, file: str, where: str) -> str | None:
    if value is None:
        return None
    kps = _list(value, file, where)
    if len(kps) % 3:
        raise DatasetError(file, where, f"keypoints must be x,y,v triples, got {len(kps)} numbers")
    for i in range(0, len(kps), 3):
        _number(kps[i], file, f"{where}[{i}]")
        _number(kps[i + 1], file, f"{where}[{i + 1}]")
        if kps[i + 2] not in (0, 1, 2):
            raise DatasetError(
                file, f"{where}[{i + 2}]", f"visibility must be 0, 1 or 2, got {kps[i + 2]!r}"
            )
    return json.dumps(kps, separators=(",", ":"))


def _track(value: Any, file: str, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DatasetError(file, where, f"track_id must be an integer or string, got {value!r}")
    return str(value)


def _new_id(record: Any, seen: set[int], file: str, where: str, what: str) -> int:
    """The record's integer ``id``, which must not repeat within its list."""
    value = _int(_need(record, "id", file, where), file, f"{where}.id")
    if value in seen:
        raise DatasetError(file, f"{where}.id", f"duplicate {what} id {value}")
    seen.add(value)
    return value


def parse_categories(data: dict[str, Any], file: str) -> pd.DataFrame:
    rows = []
    seen: set[int] = set()
    for i, cat in enumerate(_list(data.get("categories", []), file, "categories")):
        where = f"categories[{i}]"
        cid = _new_id(cat, seen, file, where, "category")
        name = _need(cat, "name", file, where)
        if not isinstance(name, str) or not name:
            raise DatasetError(file, f"{where}.name", f"expected a non-empty string, got {name!r}")
        rows.append(
            {
                "category_id": cid,
                "category": name,
                "supercategory": str(cat.get("supercategory") or ""),
            }
        )
    return pd.DataFrame(rows, columns=["category_id", "category", "supercategory"])


def _image_row(img: Any, seen: tuple[set, set], file: str, where: str) -> dict[str, Any]:
    image_ids, names = seen
    iid = _new_id(img, image_ids, file, where, "image")
    try:
        name = safe_relative_path(_need(img, "file_name", file, where), file, f"{where}.file_name")
        if name in names:
            raise DatasetError(file, f"{where}.file_name", f"file {name!r} is listed twice")
        w, h = img.get("width"), img.get("height")
        row = {
            "image_id": iid,
            "file_name": name,
            "coco_width": None if w is None else _int(w, file, f"{where}.width", minimum=1),
            "coco_height": None if h is None else _int(h, file, f"{where}.height", minimum=1),
            "video_id": _track(img.get("video_id"), file, f"{where}.video_id"),
            "frame_index": None
            if img.get("frame_index") is None
            else _int(img["frame_index"], file, f"{where}.frame_index", minimum=0),
        }
    except DatasetError:
        image_ids.discard(iid)  # a quarantined image does not claim its id: its objects go too
        raise
    names.add(name)
    return row


def _annotation_row(
    ann: Any, seen: set[int], image_ids: set[int], cat_names: dict, file: str, where: str
) -> dict[str, Any]:
    aid = _new_id(ann, seen, file, where, "annotation")
    try:
        iid = _int(_need(ann, "image_id", file, where), file, f"{where}.image_id")
        if iid not in image_ids:
            raise DatasetError(file, f"{where}.image_id", f"image id {iid} is not in images")
        cid = _int(_need(ann, "category_id", file, where), file, f"{where}.category_id")
        if cid not in cat_names:
            raise DatasetError(
                file, f"{where}.category_id", f"category id {cid} is not in categories"
            )
        x, y, w, h = _bbox(_need(ann, "bbox", file, where), file, f"{where}.bbox")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise DatasetError(file, f"{where}.iscrowd", f"expected 0 or 1, got {crowd!r}")
        area = ann.get("area")
        return {
            "annotation_id": aid,
            "image_id": iid,
            "category_id": cid,
            "category": cat_names[cid],
            "bbox_x": x,
            "bbox_y": y,
            "bbox_w": w,
            "bbox_h": h,
            "area": None if area is None else _number(area, file, f"{where}.area", minimum=0),
            "iscrowd": int(crowd),
            "segmentation": _segmentation(ann.get("segmentation"), file, f"{where}.segmentation"),
            "track_id": _track(ann.get("track_id"), file, f"{where}.track_id"),
            "keypoints": _keypoints(ann.get("keypoints"), file, f"{where}.keypoints"),
            "annotator": None if ann.get("annotator") is None else str(ann["annotator"]),
            "created": None if ann.get("created") is None else str(ann["created"]),
        }
    except DatasetError:
        seen.discard(aid)  # a quarantined record does not claim its id
        raise


def parse_instances(data: Any, file: str, strict: bool = True) -> CocoTables:
    """Validate a COCO instances document (images, annotations, categories).

    ``strict``: the first malformed image or annotation record raises ``DatasetError``.
    Otherwise (quarantine) such records are left out, listed in ``quarantined``, and the rest
    is kept; an annotation of a quarantined image goes with it. The document's structure and
    its categories (the label schema) are always strict."""
    if not isinstance(data, dict):
        raise DatasetError(
            file, "", f"expected a COCO object at the top level, got {type(data).__name__}"
        )
    categories = parse_categories(data, file)
    cat_names = dict(zip(categories.category_id, categories.category, strict=True))
    records = _Records(strict)
    images = []
    seen: tuple[set[int], set[str]] = (set(), set())
    for i, img in enumerate(_list(_need(data, "images", file, ""), file, "images")):
        where = f"images[{i}]"
        row = records.keep(lambda: _image_row(img, seen, file, where), img, where)  # noqa: B023
        if row is not None:
            images.append(row)
    anns = _list(data.get("annotations", []), file, "annotations")
    table = _annotations_at_once(anns, seen[0], cat_names, file)
    if table is not None:
        return CocoTables(
            pd.DataFrame(images, columns=IMAGE_COLUMNS), table, categories, records.quarantined
        )
    annotations = []
    ann_ids: set[int] = set()
    for i, ann in enumerate(anns):
        where = f"annotations[{i}]"
        row = records.keep(
            lambda: _annotation_row(ann, ann_ids, seen[0], cat_names, file, where),  # noqa: B023
            ann,
            where,
        )
        if row is not None:
            annotations.append(row)
    return CocoTables(
        images=pd.DataFrame(images, columns=IMAGE_COLUMNS),
        annotations=pd.DataFrame(annotations, columns=ANNOTATION_COLUMNS),
        categories=categories,
        quarantined=records.quarantined,
    )


def _result_row(
    det: Any, i: int, known_images, cat_names: dict, file: str, where: str
) -> dict[str, Any]:
    iid = _int(_need(det, "image_id", file, where), file, f"{where}.image_id")
    if known_images is not None and iid not in known_images:
        raise DatasetError(
            file, f"{where}.image_id", f"image id {iid} is not in the version's images"
        )
    cid = _int(_need(det, "category_id", file, where), file, f"{where}.category_id")
    if cat_names and cid not in cat_names:
        raise DatasetError(file, f"{where}.category_id", f"category id {cid} is not in categories")
    segmentation = _segmentation(det.get("segmentation"), file, f"{where}.segmentation")
    keypoints = _keypoints(det.get("keypoints"), file, f"{where}.keypoints")
    if "bbox" not in det and isinstance(det.get("segmentation"), dict):
        x, y, w, h = _mask_bbox(det["segmentation"])  # a mask result: its mask's box
    elif "bbox" not in det and keypoints is not None:
        x, y, w, h = _keypoint_bbox(det["keypoints"], file, f"{where}.keypoints")
    else:
        x, y, w, h = _bbox(_need(det, "bbox", file, where), file, f"{where}.bbox")
    score = _number(_need(det, "score", file, where), file, f"{where}.score")
    scores = det.get("scores")
    if scores is not None:
        for j, s in enumerate(_list(scores, file, f"{where}.scores")):
            _number(s, file, f"{where}.scores[{j}]", minimum=0)
    return {
        "prediction_id": i + 1,
        "image_id": iid,
        "category_id": cid,
        "category": cat_names.get(cid, str(cid)),
        "bbox_x": x,
        "bbox_y": y,
        "bbox_w": w,
        "bbox_h": h,
        "score": score,
        "segmentation": segmentation,
        "track_id": _track(det.get("track_id"), file, f"{where}.track_id"),
        "scores": None if scores is None else json.dumps(scores),
        "keypoints": keypoints,
    }


def _keypoint_bbox(kps: list, file: str, where: str) -> tuple[float, float, float, float]:
    """A keypoint result's box as pycocotools' ``loadRes`` makes it: the keypoints' extent."""
    if not kps:
        raise DatasetError(file, where, "a keypoint result without a box needs keypoints")
    xs, ys = kps[0::3], kps[1::3]
    x0, y0 = float(min(xs)), float(min(ys))
    return x0, y0, float(max(xs)) - x0, float(max(ys)) - y0


def _mask_bbox(rle: dict) -> tuple[float, float, float, float]:
    """pycocotools' ``toBbox`` of a (validated) RLE."""
    height, width = rle["size"]
    x, y, w, h = (float(v) for v in mask_utils.toBbox(parsed_rle(rle, height, width)))
    return x, y, w, h


def parse_results(
    data: Any,
    file: str,
    image_ids: Iterable[int] | None,
    categories: pd.DataFrame,
    quarantined: list[Quarantined] | None = None,
) -> pd.DataFrame:
    """Validate a COCO results list; ids are 1-based positions, as pycocotools' ``loadRes``.
    With a ``quarantined`` list, malformed detections are appended to it and left out (the
    others keep their position ids); without, the first one raises ``DatasetError``."""
    known_images = None if image_ids is None else set(image_ids)
    cat_names = dict(zip(categories.category_id, categories.category, strict=True))
    table = _results_at_once(_list(data, file, ""), known_images, cat_names, file)
    if table is not None:
        return table
    records = _Records(strict=quarantined is None)
    rows = []
    for i, det in enumerate(data):
        where = f"[{i}]"
        row = records.keep(
            lambda: _result_row(det, i, known_images, cat_names, file, where),  # noqa: B023
            det,
            where,
        )
        if row is not None:
            rows.append(row)
    if quarantined is not None:
        quarantined += records.quarantined
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)


# Column-wise fast paths. The record-by-record validation above costs ~17 us a record (42k
# annotations of the generated 12k version: 0.7 s; 350k at 100k: ~6 s); building each column at
# once and checking it with numpy takes a fraction of that. They answer only when every record
# is valid, and None otherwise: the record-by-record path then names the bad record and
# quarantines it. Both build the same table (tests compare them on real and generated files).


def _ints(values: list) -> bool:
    return all(type(v) is int for v in values)


def _boxes(values: list) -> np.ndarray | None:
    """``n x 4`` boxes when every value is a list of 4 finite numbers with w, h >= 0."""
    plain = all(
        type(b) is list and len(b) == 4 and all(type(v) in (int, float) for v in b) for b in values
    )
    if not plain:
        return None
    box = np.array(values, np.float64).reshape(-1, 4)
    return box if np.isfinite(box).all() and (box[:, 2:] >= 0).all() else None


def _numbers(values: list, minimum: float | None = None) -> bool:
    """Whether every value is None or a finite number (>= ``minimum``)."""
    floor = -math.inf if minimum is None else minimum
    return all(
        v is None or (type(v) in (int, float) and math.isfinite(v) and v >= floor) for v in values
    )


def _validated(values: list, check, file: str) -> list | None:
    """``check`` (one of the record validators) of every value that is not None, or None when
    one is invalid."""
    try:
        return [None if v is None else check(v, file, "") for v in values]
    except DatasetError:
        return None


def _common(records: list, cat_names: dict, file: str) -> dict[str, Any] | None:
    """The columns annotations and results share (image, class, box, segmentation, track), or
    None when one record's is invalid."""
    if not all(type(r) is dict for r in records):
        return None
    images, cats = ([r.get(k) for r in records] for k in ("image_id", "category_id"))
    box = _boxes([r.get("bbox") for r in records])
    if box is None or not (_ints(images) and _ints(cats)):
        return None
    segmentation = _validated([r.get("segmentation") for r in records], _segmentation, file)
    track = _validated([r.get("track_id") for r in records], _track, file)
    if segmentation is None or track is None:
        return None
    return {
        "image_id": np.array(images, np.int64),
        "category_id": np.array(cats, np.int64),
        "category": [cat_names.get(c, str(c)) for c in cats],
        "bbox_x": box[:, 0],
        "bbox_y": box[:, 1],
        "bbox_w": box[:, 2],
        "bbox_h": box[:, 3],
        "segmentation": segmentation,
        "track_id": track,
    }


def _annotations_at_once(
    anns: list, image_ids: set[int], cat_names: dict, file: str
) -> pd.DataFrame | None:
    """The annotations table when every record is valid (``_annotation_row``'s rules)."""
    columns = _common(anns, cat_names, file)
    if columns is None:
        return None
    ids = [a.get("id") for a in anns]
    crowd = [a.get("iscrowd", 0) for a in anns]
    area = [a.get("area") for a in anns]
    keypoints = _validated([a.get("keypoints") for a in anns], _keypoints, file)
    valid = (
        _ints(ids)
        and len(set(ids)) == len(ids)
        and image_ids.issuperset(columns["image_id"].tolist())
        and set(cat_names).issuperset(columns["category_id"].tolist())
        and all(c in (0, 1) for c in crowd)
        and _numbers(area, minimum=0)
        and keypoints is not None
    )
    if not valid:
        return None
    as_text = lambda key: [None if a.get(key) is None else str(a[key]) for a in anns]  # noqa: E731
    columns |= {
        "annotation_id": np.array(ids, np.int64),
        "area": [None if v is None else float(v) for v in area],
        "iscrowd": np.array([int(c) for c in crowd], np.int64),
        "keypoints": keypoints,
        "annotator": as_text("annotator"),
        "created": as_text("created"),
    }
    return pd.DataFrame(columns, columns=ANNOTATION_COLUMNS)


def _results_at_once(
    dets: list, known_images: set[int] | None, cat_names: dict, file: str
) -> pd.DataFrame | None:
    """The predictions table when every detection is valid and has a box and no per-class
    ``scores`` (``_result_row``'s rules)."""
    if any(type(d) is dict and d.get("scores") is not None for d in dets):
        return None
    columns = _common(dets, cat_names, file)
    if columns is None:
        return None
    score = [d.get("score") for d in dets]
    valid = (
        all(v is not None for v in score)
        and _numbers(score)
        and (known_images is None or known_images.issuperset(columns["image_id"].tolist()))
        and (not cat_names or set(cat_names).issuperset(columns["category_id"].tolist()))
    )
    if not valid:
        return None
    keypoints = _validated([d.get("keypoints") for d in dets], _keypoints, file)
    if keypoints is None:
        return None
    columns |= {
        "prediction_id": np.arange(1, len(dets) + 1, dtype=np.int64),
        "score": np.array(score, np.float64),
        "scores": [None] * len(dets),
        "keypoints": keypoints,
    }
    return pd.DataFrame(columns, columns=PREDICTION_COLUMNS)
