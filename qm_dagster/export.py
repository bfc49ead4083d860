"""Write a slice (or the whole) of a version for the next step of the work: as a new version in
our layout (e.g. the images an acquisition function ranks highest: "what should I label
next"), as COCO (annotations.json with every metric value on its image and object, results
per model), in the Ultralytics YOLO layout (data.yaml, images/, labels/) or as FiftyOne's image
detection dataset (data/, labels.json) that those tools and ``qm import`` open."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
import yaml
from PIL import Image

from qm_dagster import storage
from qm_dagster.coco import load_json
from qm_dagster.dataset import Version
from qm_dagster.errors import QmError
from qm_dagster.layout import VersionWriter
from qm_dagster.slices import Slice

FORMATS = ("version", "coco", "yolo", "fiftyone")
METRICS_FIELD = "qm_metrics"  # extra COCO field: {metric asset key: value}


@dataclass
class Selected:
    """What of a version an export writes: its kept COCO instances (None for an unlabeled
    version), the image files and each model's kept results."""

    version: Version
    coco: dict[str, Any] | None
    names: list[str]
    results: dict[str, list[dict[str, Any]]]

    @property
    def image_ids(self) -> set:
        return {i["id"] for i in (self.coco or {}).get("images", [])}


def select(version: Version, rows: pd.DataFrame | None = None, level: str = "image") -> Selected:
    """The images of ``rows`` (a slice's rows of its quality table; None: every image) with all
    their objects, or for an object slice only the selected objects (and their images)."""
    keep = None if rows is None else set(rows.image_id.tolist())
    coco, results = None, {}
    if version.has_annotations():
        coco = load_json(storage.read_bytes(version.annotations_url), version.annotations_url)
        images = [i for i in coco["images"] if keep is None or i["id"] in keep]
        ids = {i["id"] for i in images}
        anns = [a for a in coco.get("annotations", []) if a["image_id"] in ids]
        if level == "object" and rows is not None:
            kept = set(rows.annotation_id.tolist())
            anns = [a for a in anns if a["id"] in kept]
        coco = {**coco, "images": images, "annotations": anns}
        names = [i["file_name"] for i in images]
        for model, url in version.prediction_files().items():
            found = load_json(storage.read_bytes(url), url)
            results[model] = [r for r in found if r["image_id"] in ids]
    elif keep is not None:
        names = sorted(str(i) for i in keep)
    else:
        names = [str(n) for n in version.image_table().file_name]
    return Selected(version, coco, names, results)


def _copy_images(selected: Selected, write) -> None:
    for file_name in selected.names:
        url = storage.join(selected.version.images_url, file_name)
        if storage.exists(url):
            write(file_name, storage.read_bytes(url))


def export_slice(
    version: Version, rows: pd.DataFrame, s: Slice, root: str, name: str, overwrite: bool = False
) -> Version:
    """``rows``: the slice's rows of its quality table, written as version ``name`` under
    ``root``. Image slices keep every object of their images; object slices keep only the
    selected objects (and their images)."""
    selected = select(version, rows, s.level)
    writer = VersionWriter(root, name, overwrite=overwrite)
    _copy_images(selected, writer.add_image)
    if selected.coco is not None:
        writer.write_annotations(selected.coco)
        for model, results in selected.results.items():
            writer.write_predictions(model, results)
    return writer.commit(
        kind=version.meta().kind,
        reference=version.meta().reference,
        description=f"slice {s.name!r} ({s.where}) of {version.name}: "
        f"{json.dumps(len(selected.names))} images",
    )


def _values(table: pd.DataFrame | None, key: str, prefix: str) -> dict[object, dict[str, float]]:
    """``{row key: {metric: value}}`` of a quality table's ``prefix`` columns (finite only)."""
    if table is None or table.empty:
        return {}
    columns = [c for c in table.columns if c.startswith(prefix)]
    out = {}
    for row_key, values in zip(table[key], table[columns].to_numpy(float), strict=True):
        out[row_key] = {
            c: float(v) for c, v in zip(columns, values, strict=True) if math.isfinite(v)
        }
    return out


def export_coco(
    selected: Selected,
    out: str,
    images: pd.DataFrame | None = None,
    objects: pd.DataFrame | None = None,
) -> str:
    """``out/annotations.json`` (COCO instances; each image and object with its metric values
    under ``qm_metrics`` from the quality tables ``images`` / ``objects``),
    ``out/predictions/<model>.json`` and ``out/images/``. Returns the annotations URL."""
    if selected.coco is None:
        raise QmError(f"{selected.version.name} has no annotations.json: nothing to write as COCO")
    image_values = _values(images, "image_id", "data/")
    object_values = _values(objects, "annotation_id", "label/")
    coco = {
        **selected.coco,
        "images": [
            {**i, METRICS_FIELD: image_values.get(i["id"], {})} for i in selected.coco["images"]
        ],
        "annotations": [
            {**a, METRICS_FIELD: object_values.get(a["id"], {})}
            for a in selected.coco["annotations"]
        ],
    }
    _copy_images(selected, lambda name, data: _write(out, f"images/{name}", data))
    for model, results in selected.results.items():
        _write(out, f"predictions/{model}.json", _json(results))
    return _write(out, "annotations.json", _json(coco))


def export_yolo(selected: Selected, out: str, split: str = "train") -> str:
    """The Ultralytics layout: ``out/data.yaml`` (``path``, the split, ``names`` by class
    index in category-id order), ``out/images/<split>/``, ``out/labels/<split>/*.txt``: a
    box as ``class cx cy w h``, a one-part polygon as a YOLO-seg line, relative to the image.
    Crowd regions (no YOLO equivalent) and objects of images without a size are left out and
    counted in the returned summary line; metric values have no place in YOLO."""
    names, index = _classes(selected)
    by_image: dict[object, list[dict]] = {}
    for ann in selected.coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    left_out = 0
    for image in selected.coco["images"]:
        size = _size(selected.version, image)
        lines = []
        for ann in by_image.get(image["id"], []):
            line = _yolo_line(ann, index[ann["category_id"]], size)
            if line is None:
                left_out += 1
            else:
                lines.append(line)
        if lines:  # an image without objects needs no label file (Ultralytics' convention)
            label = PurePosixPath(image["file_name"]).with_suffix(".txt").as_posix()
            _write(out, f"labels/{split}/{label}", "".join(f"{x}\n" for x in lines).encode())
    _copy_images(selected, lambda name, data: _write(out, f"images/{split}/{name}", data))
    data = {"path": ".", split: f"images/{split}", "names": dict(enumerate(names))}
    url = _write(out, "data.yaml", yaml.safe_dump(data, sort_keys=False).encode())
    return f"{url} ({left_out} crowd or unsized objects left out)"


def export_fiftyone(
    selected: Selected,
    out: str,
    images: pd.DataFrame | None = None,
    objects: pd.DataFrame | None = None,
) -> str:
    """FiftyOne's ``FiftyOneImageDetectionDataset``: ``out/data/<file>``, ``out/labels.json``
    (``classes``; per image, keyed by its path without extension, the ground truth with
    ``bounding_box`` relative to the image and the object's metric values as ``attributes``),
    ``out/predictions/<model>.json`` (the same with ``confidence``), and ``out/metrics.json``
    (image metric values by the same key: the format has no image fields, FiftyOne sets them
    with ``set_values``). Crowd regions are marked by an ``iscrowd`` attribute."""
    names, index = _classes(selected)
    keys = _fiftyone_keys(selected.coco["images"])
    sizes = {i["id"]: _size(selected.version, i) for i in selected.coco["images"]}
    object_values = _values(objects, "annotation_id", "label/")

    def detections(rows: list[dict], scored: bool) -> dict[str, list[dict]]:
        out_rows: dict[str, list[dict]] = {key: [] for key in keys.values()}
        for r in rows:
            size = sizes.get(r["image_id"])
            if size is None:
                continue
            det = {"label": index[r["category_id"]], "bounding_box": _relative(r["bbox"], size)}
            if scored:
                det["confidence"] = r.get("score")
            else:
                values = {k.split("/", 1)[1]: v for k, v in object_values.get(r["id"], {}).items()}
                det["attributes"] = {"iscrowd": int(r.get("iscrowd", 0)), **values}
            out_rows[keys[r["image_id"]]].append(det)
        return out_rows

    document = {"classes": names, "labels": detections(selected.coco["annotations"], False)}
    for model, results in selected.results.items():
        _write(
            out,
            f"predictions/{model}.json",
            _json({"classes": names, "labels": detections(results, True)}),
        )
    image_values = _values(images, "image_id", "data/")
    metrics = {keys[i]: image_values.get(i, {}) for i in keys}
    _write(out, "metrics.json", _json(metrics))
    _copy_images(selected, lambda name, data: _write(out, f"data/{name}", data))
    return _write(out, "labels.json", _json(document))


def _classes(selected: Selected) -> tuple[list[str], dict[int, int]]:
    """The class names in category-id order and each category id's index among them (YOLO's
    and FiftyOne's class numbers); an unlabeled version has nothing to export as labels."""
    if selected.coco is None:
        raise QmError(f"{selected.version.name} has no annotations.json: nothing to label")
    categories = sorted(selected.coco.get("categories", []), key=lambda c: c["id"])
    return [c["name"] for c in categories], {c["id"]: i for i, c in enumerate(categories)}


def _fiftyone_keys(images: list[dict]) -> dict[object, str]:
    """FiftyOne's key of each image: its path under data/ without the extension."""
    keys = {i["id"]: PurePosixPath(i["file_name"]).with_suffix("").as_posix() for i in images}
    seen: dict[str, object] = {}
    for image_id, key in keys.items():
        if key in seen:
            raise QmError(
                f"images {seen[key]} and {image_id} share the name {key!r} but for the extension: "
                "FiftyOne's layout keys images without it"
            )
        seen[key] = image_id
    return keys


def _relative(bbox: list[float], size: tuple[int, int]) -> list[float]:
    w, h = size
    x, y, bw, bh = (float(v) for v in bbox)
    return [x / w, y / h, bw / w, bh / h]


def _yolo_line(ann: dict, cls: int, size: tuple[int, int] | None) -> str | None:
    if ann.get("iscrowd") or size is None:
        return None
    w, h = size
    seg = ann.get("segmentation")
    if isinstance(seg, list) and len(seg) == 1 and len(seg[0]) >= 6:
        coords = [v / (w if i % 2 == 0 else h) for i, v in enumerate(seg[0])]
        return " ".join([str(cls), *(repr(float(v)) for v in coords)])
    x, y, bw, bh = ann["bbox"]
    box = ((x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h)
    return " ".join([str(cls), *(repr(float(v)) for v in box)])


def _size(version: Version, image: dict) -> tuple[int, int] | None:
    """The image's width and height: annotations.json's, else the file's header."""
    if image.get("width") and image.get("height"):
        return int(image["width"]), int(image["height"])
    url = storage.join(version.images_url, image["file_name"])
    if not storage.exists(url):
        return None
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as fh, Image.open(fh) as img:
        return int(img.width), int(img.height)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _write(out: str, rel: str, data: bytes) -> str:
    url = storage.join(out, rel)
    storage.write_bytes_atomic(url, data)
    return url
