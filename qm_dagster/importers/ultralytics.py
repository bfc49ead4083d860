"""Import an Ultralytics YOLO dataset as it ships: its dataset YAML (``path``, ``train``,
``val``, ``test``, ``names`` as a list or ``{id: name}``), one version per split.

A split is an images folder, a ``.txt`` list of image paths (COCO's ``train2017.txt``; relative
lines are relative to the list's folder), or a list of either, relative to ``path`` (itself
relative to the YAML's folder). Each image's labels are where Ultralytics looks for them: the
image's path with its last ``images`` folder named ``labels`` and ``.txt`` for its suffix.
Boxes (``class cx cy w h``) and YOLO-seg polygons (``class x1 y1 x2 y2 ...``) alike, relative
to the image. The val and test versions reference the train version (drift against it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from qm_dagster.dataset import IMAGE_EXTENSIONS, Version
from qm_dagster.errors import DatasetError, QmError
from qm_dagster.importers.convert import annotation_record, image_size
from qm_dagster.importers.readers import Issue, Issues, read_txt_file, yaml_names
from qm_dagster.layout import VersionWriter

SPLITS = {"train": "train", "val": "validation", "test": "validation"}  # split -> version kind


def read_dataset_yaml(path: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise QmError(f"dataset YAML {path}: cannot read ({exc})") from exc
    except yaml.YAMLError as exc:
        raise DatasetError(path, "", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(path, "", "expected a mapping (path, train, val, test, names)")
    return data


def label_path(image: Path) -> Path | None:
    """Ultralytics' label file of an image: its last ``images`` folder as ``labels``, ``.txt``."""
    parts = list(image.parts)
    if "images" not in parts[:-1]:
        return None
    last = len(parts) - 2 - parts[-2::-1].index("images")
    parts[last] = "labels"
    return Path(*parts).with_suffix(".txt")


def _base(data: dict, yaml_path: str) -> Path:
    root = Path(yaml_path).parent
    base = Path(data.get("path") or root)
    return base if base.is_absolute() else root / base


def split_images(
    value: Any, base: Path, yaml_path: str, split: str, issues: Issues
) -> tuple[list[Path], list[Path]]:
    """The image files of one split's value (a folder, a .txt list, or a list of them), and
    those found by walking a folder (whose label folder holds only theirs)."""
    out: list[Path] = []
    walked: list[Path] = []
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, str):
            raise DatasetError(yaml_path, split, f"expected a folder or a .txt list, got {item!r}")
        source = Path(item) if Path(item).is_absolute() else base / item
        if source.is_dir():
            found = sorted(
                p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            out += found
            walked += found
        elif source.suffix == ".txt" and source.is_file():
            out += _listed(source, issues)
        else:
            raise DatasetError(yaml_path, split, f"{source} is neither a folder nor a .txt list")
    return out, walked


def _listed(listing: Path, issues: Issues) -> list[Path]:
    out = []
    for n, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        path = Path(line.strip())
        path = path if path.is_absolute() else listing.parent / path
        if path.is_file():
            out.append(path)
        else:
            issues.add(Issue(str(listing), f"line {n}", f"listed image {path} not found: skipped"))
    return out


def _orphan_labels(images: list[Path], issues: Issues) -> None:
    """Label files beside the labels of a walked folder's images with no image (a dataset
    quirk): reported. (A .txt list may name a subset of a folder: no orphans are told then.)"""
    used = {label_path(p) for p in images} - {None}
    for folder in sorted({p.parent for p in used}):
        for label in sorted(folder.glob("*.txt")):
            if label not in used:
                issues.add(Issue(str(label), "", "label file without an image: skipped"))


def _read_split(
    images: tuple[list[Path], list[Path]], base: Path, names: list[str], issues: Issues
) -> tuple[list[tuple[str, Path]], dict[str, Any]]:
    """Every image's name in the version and file, and the split's COCO instances: all read
    (and checked) before anything is written."""
    cat_id = {name: i + 1 for i, name in enumerate(names)}
    files, records, annotations = [], [], []
    for image_id, path in enumerate(images[0], start=1):
        rel = os.path.relpath(path, base)
        rel = path.name if rel.startswith("..") else Path(rel).as_posix()
        size = image_size(path)
        record: dict[str, Any] = {"id": image_id, "file_name": rel}
        if size:
            record["width"], record["height"] = size
        records.append(record)
        files.append((rel, path))
        label = label_path(path)
        if label is None or not label.is_file():
            continue  # an image without a label file: no objects
        if size is None:
            issues.add(Issue(str(label), "", f"its image {rel} has no readable size: skipped"))
            continue
        for box in read_txt_file(label, "yolo", False, names, size, issues):
            annotations.append(annotation_record(box, len(annotations) + 1, image_id, cat_id, size))
    _orphan_labels(images[1], issues)
    categories = [{"id": i, "name": n} for n, i in cat_id.items()]
    return files, {"images": records, "annotations": annotations, "categories": categories}


def import_ultralytics(
    yaml_path: str, root: str, name: str, strict: bool = False, overwrite: bool = False
) -> list[Version]:
    """Each split of the dataset as version ``<name>-<split>`` (val and test referencing
    ``<name>-train`` when there is one)."""
    data = read_dataset_yaml(yaml_path)
    names = yaml_names(data, yaml_path)
    base = _base(data, yaml_path)
    splits = [s for s in SPLITS if data.get(s)]
    if not splits:
        raise DatasetError(yaml_path, "", "names no split: expected train, val or test")
    train = f"{name}-train" if "train" in splits else None
    versions = []
    for split in splits:
        issues = Issues(strict)
        images = split_images(data[split], base, yaml_path, split, issues)
        files, coco = _read_split(images, base, names, issues)
        writer = VersionWriter(root, f"{name}-{split}", overwrite=overwrite)
        for rel, path in files:
            writer.add_image(rel, path.read_bytes())
        writer.write_annotations(coco)
        if issues.items:
            writer.write_import_issues([vars(issue) for issue in issues.items])
        versions.append(
            writer.commit(
                kind=SPLITS[split],
                reference=None if split == "train" else train,
                description=f"{Path(yaml_path).name}: {split}",
            )
        )
    return versions
