"""Dataset roots and versions: ``<root>/<version>/{images/, annotations.json, predictions/, version.json}``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from qm_dagster import storage
from qm_dagster.coco import (
    CocoTables,
    Quarantined,
    load_json,
    parse_categories,
    parse_instances,
    parse_results,
)
from qm_dagster.errors import DatasetError, VersionNameError

VERSION_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# What the manifest lists and the pass decodes (OpenCV; a GIF's or a multi-page TIFF's first
# frame). Other files under images/ are reported as skipped (data_issues, severity info).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VERSION_KINDS = ("train", "validation", "production")
CLASSIFICATION = "classification"  # version.json "task" of a classification version
# predictions/<model>.<suffix>: detections are .json; a classification version's probabilities
# .csv, .parquet or .json
PREDICTION_SUFFIXES = (".json", ".csv", ".parquet")


def check_version_name(name: str) -> str:
    """Return ``name`` if it is a valid version name (it becomes a Dagster partition key)."""
    if not VERSION_NAME.match(name or ""):
        raise VersionNameError(
            f"version name {name!r} is invalid: use 1-128 characters from A-Z a-z 0-9 . _ -"
        )
    if set(name) == {"."} or "..." in name:
        raise VersionNameError(
            f"version name {name!r} is invalid: it may not be dots only or contain '...'"
        )
    return name


@dataclass
class VersionMeta:
    """Parsed ``version.json``; every field optional."""

    kind: str | None = None
    reference: str | None = None
    created: str | None = None
    description: str | None = None
    images_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any, file: str) -> VersionMeta:
        if not isinstance(data, dict):
            raise DatasetError(file, "", "version.json must hold a JSON object")
        kind = data.get("kind")
        if kind is not None and kind not in VERSION_KINDS:
            raise DatasetError(file, "kind", f"expected one of {VERSION_KINDS}, got {kind!r}")
        ref = data.get("reference")
        if ref is not None:
            try:
                check_version_name(ref)
            except VersionNameError as exc:
                raise DatasetError(file, "reference", str(exc)) from exc
        known = {"kind", "reference", "created", "description", "images_root"}
        return cls(
            kind=kind,
            reference=ref,
            created=None if data.get("created") is None else str(data["created"]),
            description=None if data.get("description") is None else str(data["description"]),
            images_root=None if data.get("images_root") is None else str(data["images_root"]),
            extra={k: v for k, v in data.items() if k not in known},
        )


class Version:
    """One dataset version folder."""

    def __init__(self, root: str, name: str):
        self.name = check_version_name(name)
        self.url = storage.join(root, name)

    @property
    def version_json_url(self) -> str:
        return storage.join(self.url, "version.json")

    @property
    def annotations_url(self) -> str:
        return storage.join(self.url, "annotations.json")

    @property
    def import_issues_url(self) -> str:
        return storage.join(self.url, "import_issues.json")

    def import_issues(self) -> list[Quarantined]:
        """What ``qm import`` left out of (or noted about) its source, as data issues."""
        url = self.import_issues_url
        if not storage.exists(url):
            return []
        records = load_json(storage.read_bytes(url), url)
        return [
            Quarantined(
                r["file"], r["where"], None, r["reason"], stage="import", severity=r["severity"]
            )
            for r in records
        ]

    @property
    def predictions_url(self) -> str:
        return storage.join(self.url, "predictions")

    def is_complete(self) -> bool:
        """A version is complete once its producer wrote ``version.json`` (last)."""
        return storage.exists(self.version_json_url)

    def meta(self) -> VersionMeta:
        url = self.version_json_url
        if not storage.exists(url):
            raise DatasetError(url, "", "version.json is missing: the version is not complete")
        return VersionMeta.parse(load_json(storage.read_bytes(url), url), url)

    @property
    def images_url(self) -> str:
        root = self.meta().images_root
        if root is None:
            return storage.join(self.url, "images")
        if "://" in root or root.startswith("/"):
            return root
        return storage.join(self.url, root)

    def task(self) -> str:
        """``detection`` (COCO annotations and detections) or ``classification``."""
        if not self.is_complete():
            return "detection"
        return str(self.meta().extra.get("task") or "detection")

    def has_annotations(self) -> bool:
        return storage.exists(self.annotations_url)

    def instances(self, strict: bool = False) -> CocoTables | None:
        """The validated annotations, or ``None`` for an unlabeled version; malformed records
        are quarantined (``CocoTables.quarantined``) unless ``strict``."""
        if not self.has_annotations():
            return None
        url = self.annotations_url
        return parse_instances(load_json(storage.read_bytes(url), url), url, strict)

    def image_table(self) -> pd.DataFrame:
        """One row per data point: from ``annotations.json`` or, without it, every image file."""
        coco = self.instances()
        if coco is not None:
            return coco.images
        parts = list(self.image_batches())
        return pd.concat(parts, ignore_index=True) if parts else listed_images([])

    def image_batches(
        self, rows: int = 4096, skipped: list[tuple[str, str]] | None = None
    ) -> Iterator[pd.DataFrame]:
        """The image files of an unlabeled version, ``rows`` at a time, in path order;
        ``skipped`` collects ``(path, reason)`` of what is under images/ but is no image."""
        names: list[str] = []
        for rel in storage.walk_files(self.images_url, folders=skipped is not None):
            if rel.endswith("/"):
                if rel.rstrip("/").lower().endswith(IMAGE_EXTENSIONS):
                    skipped.append((rel, "a folder named like an image: skipped"))
                continue
            if rel.lower().endswith(IMAGE_EXTENSIONS):
                names.append(rel)
                if len(names) == rows:
                    yield listed_images(names)
                    names = []
            elif skipped is not None:
                kind = PurePosixPath(rel).suffix.lower() or "no extension"
                skipped.append((rel, f"not an image file type ({kind}): skipped"))
        if names:
            yield listed_images(names)

    def prediction_files(self) -> dict[str, str]:
        """``{model: url}`` for every ``predictions/<model>.json`` (detections; a
        classification version's class probabilities are ``classification``'s)."""
        out = {}
        if self.task() == CLASSIFICATION:
            return out
        for rel in storage.walk_files(self.predictions_url):
            if "/" not in rel and rel.endswith(".json"):
                out[rel[: -len(".json")]] = storage.join(self.predictions_url, rel)
        return out

    def predictions(
        self,
        model: str,
        coco: CocoTables | None = None,
        image_ids: pd.Series | None = None,
        categories: pd.DataFrame | None = None,
        quarantined: list | None = None,
    ) -> pd.DataFrame:
        """The validated predictions of one model, against ``image_ids`` and ``categories``
        (by default those of ``coco``, parsed from annotations.json when not given; no image
        check and no categories for an unlabeled version). ``quarantined``: a list that
        collects malformed detections instead of failing (``coco.parse_results``)."""
        url = self.prediction_files()[model]
        if categories is None:
            coco = coco if coco is not None else self.instances()
            image_ids = None if coco is None else coco.images.image_id
            categories = coco.categories if coco is not None else parse_categories({}, url)
        frame = parse_results(
            load_json(storage.read_bytes(url), url), url, image_ids, categories, quarantined
        )
        frame.insert(0, "model", model)
        return frame


def listed_images(names: list[str]) -> pd.DataFrame:
    """Image-table rows of files found by listing: the path relative to ``images/`` is the id."""
    return pd.DataFrame(
        {
            "image_id": names,
            "file_name": names,
            "coco_width": None,
            "coco_height": None,
            "video_id": None,
            "frame_index": None,
        }
    )


@dataclass
class Listing:
    """What a dataset root holds: complete versions, ones still being written, invalid names."""

    complete: list[str]
    incomplete: list[str]
    invalid: list[str]


class DatasetRoot:
    """A local folder or fsspec URL whose immediate sub-folders are dataset versions."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") or url

    def version(self, name: str) -> Version:
        return Version(self.url, name)

    def listing(self) -> Listing:
        fs, path = storage.filesystem(self.url)
        complete, incomplete, invalid = [], [], []
        if not fs.exists(path):
            return Listing(complete, incomplete, invalid)
        for entry in fs.ls(path, detail=True):
            if entry.get("type") != "directory":
                continue
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            try:
                version = self.version(name)
            except VersionNameError:
                invalid.append(name)
                continue
            (complete if version.is_complete() else incomplete).append(name)
        return Listing(sorted(complete), sorted(incomplete), sorted(invalid))
