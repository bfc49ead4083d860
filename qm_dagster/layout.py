"""Write a dataset version in the product's layout, ``version.json`` last so readers never see half of it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from qm_dagster import storage
from qm_dagster.dataset import VERSION_KINDS, Version, check_version_name
from qm_dagster.errors import QmError


class VersionWriter:
    """Collects images, annotations and predictions for one version and commits them in order."""

    def __init__(self, root: str, name: str, overwrite: bool = False):
        self.version = Version(root, check_version_name(name))
        if self.version.is_complete() and not overwrite:
            raise QmError(
                f"version {name!r} already exists at {self.version.url} (use --overwrite)"
            )

    def add_image(self, rel_path: str, data: bytes) -> None:
        storage.write_bytes_atomic(storage.join(self.version.url, "images", rel_path), data)

    def write_annotations(self, coco: dict[str, Any]) -> None:
        storage.write_bytes_atomic(self.version.annotations_url, _dump(coco))

    def write_import_issues(self, issues: list[dict[str, str]]) -> None:
        """What the import left out of its source (``Version.import_issues`` reads it back)."""
        storage.write_bytes_atomic(self.version.import_issues_url, _dump(issues))

    def write_predictions(self, model: str, results: list[dict[str, Any]]) -> None:
        if not model or "/" in model or model.startswith("."):
            raise QmError(f"model name {model!r} must be a plain file stem")
        url = storage.join(self.version.predictions_url, f"{model}.json")
        storage.write_bytes_atomic(url, _dump(results))

    def commit(
        self,
        kind: str | None = None,
        reference: str | None = None,
        description: str | None = None,
        **extra: Any,
    ) -> Version:
        """Write ``version.json``: the version becomes visible to sensors and readers."""
        if kind is not None and kind not in VERSION_KINDS:
            raise QmError(f"kind must be one of {VERSION_KINDS}, got {kind!r}")
        if reference is not None:
            check_version_name(reference)
        meta = {
            "kind": kind,
            "reference": reference,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "description": description,
            **extra,
        }
        storage.write_bytes_atomic(self.version.version_json_url, _dump(meta))
        return self.version


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def register_folder(
    folder: str,
    root: str,
    name: str,
    kind: str | None = None,
    reference: str | None = None,
    description: str | None = None,
    overwrite: bool = False,
) -> Version:
    """Copy a folder already in the version layout into ``root`` as version ``name``."""
    from qm_dagster.coco import load_json, parse_instances

    annotations = storage.join(folder, "annotations.json")
    if storage.exists(annotations):  # validate before copying anything
        parse_instances(load_json(storage.read_bytes(annotations), annotations), annotations)
    writer = VersionWriter(root, name, overwrite=overwrite)
    for rel in storage.walk_files(folder):
        if rel != "version.json":
            storage.write_bytes_atomic(
                storage.join(writer.version.url, rel), storage.read_bytes(storage.join(folder, rel))
            )
    return writer.commit(kind=kind, reference=reference, description=description)
