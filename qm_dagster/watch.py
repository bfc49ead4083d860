"""What landed in a dataset root since the last look: new or re-uploaded versions, new or changed
prediction files. Plain Python; the sensors in ``assets/sensors.py`` keep the state between ticks.

A version is *complete* once ``version.json`` exists (producers write it last); its *signature* is
that file's etag (object stores) or mtime and size (local disks), so re-writing ``version.json``
after a re-upload is what makes a version run again. Each look lists the root once and stats only
unseen versions plus a bounded, rotating window of known ones, so its cost stays flat as versions
accumulate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from qm_dagster import storage
from qm_dagster.dataset import PREDICTION_SUFFIXES, DatasetRoot, Version
from qm_dagster.errors import VersionNameError

DEFAULT_WINDOW = 50


def file_signature(info: dict[str, Any]) -> str:
    """A change token for one listed file: etag where the store has one, else mtime and size."""
    etag = info.get("ETag") or info.get("etag") or ""
    modified = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or ""
    return f"{str(etag).strip(chr(34))}|{modified}|{info.get('size', '')}"


def signatures_digest(signatures: dict[str, str]) -> str:
    """A short stable digest of a ``{name: signature}`` mapping (used in run keys)."""
    text = json.dumps(signatures, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _listed(url: str) -> list[dict[str, Any]]:
    """Fresh (uncached) listing of one folder; empty when it does not exist."""
    fs, path = storage.filesystem(url)
    fs.invalidate_cache(path)
    try:
        return fs.ls(path, detail=True)
    except FileNotFoundError:
        return []


def _basename(entry: dict[str, Any]) -> str:
    return entry["name"].rstrip("/").rsplit("/", 1)[-1]


def _stat(url: str) -> dict[str, Any] | None:
    fs, path = storage.filesystem(url)
    fs.invalidate_cache(path)
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


@dataclass
class VersionScan:
    """One look at a dataset root."""

    landed: dict[str, str] = field(default_factory=dict)  # new or re-uploaded: name -> signature
    unchanged: dict[str, str] = field(default_factory=dict)  # looked at, same as before
    incomplete: list[str] = field(default_factory=list)  # no version.json yet
    invalid: list[str] = field(default_factory=list)  # names that cannot be partition keys
    present: list[str] = field(default_factory=list)  # every valid folder name listed
    stats: int = 0  # version.json look-ups made (the listing itself is one more call)
    position: int = 0  # where the next rotating window starts


def scan_versions(
    root: DatasetRoot,
    seen: dict[str, str],
    position: int = 0,
    window: int = DEFAULT_WINDOW,
) -> VersionScan:
    """Compare the root with ``seen`` (name -> signature): every unseen folder is looked at, and
    ``window`` known ones from ``position`` on (wrapping) are re-checked for a re-upload."""
    scan = VersionScan()
    for entry in _listed(root.url):
        if entry.get("type") != "directory":
            continue
        name = _basename(entry)
        try:
            root.version(name)
        except VersionNameError:
            scan.invalid.append(name)
            continue
        scan.present.append(name)
    scan.present.sort()
    known = [n for n in scan.present if n in seen]
    recheck, scan.position = rotating_window(known, position, window)
    for name in [n for n in scan.present if n not in seen] + recheck:
        signature = version_signature(root.version(name))
        scan.stats += 1
        if signature is None:
            scan.incomplete.append(name)
            continue
        if seen.get(name) == signature:
            scan.unchanged[name] = signature
        else:
            scan.landed[name] = signature
    return scan


def version_signature(version: Version) -> str | None:
    """The signature of the version's ``version.json`` (None while the version is incomplete)."""
    info = _stat(version.version_json_url)
    return None if info is None else file_signature(info)


def prediction_signatures(version: Version) -> dict[str, str]:
    """``{model: signature}`` of the prediction files of one version: detections'
    ``predictions/<model>.json``, a classification version's ``.csv`` / ``.parquet`` too."""
    out = {}
    for entry in _listed(version.predictions_url):
        name = _basename(entry)
        stem, dot, suffix = name.rpartition(".")
        if entry.get("type") == "file" and dot and f".{suffix}" in PREDICTION_SUFFIXES:
            out[stem] = file_signature(entry)
    return out


def rotating_window(names: list[str], position: int, window: int) -> tuple[list[str], int]:
    """``window`` items of ``names`` from ``position`` on (wrapping), and the next position."""
    if not names:
        return [], 0
    start = position % len(names)
    chosen = (names[start:] + names[:start])[: max(0, window)]
    return chosen, (start + len(chosen)) % len(names)


def newest_production(root: DatasetRoot, names: list[str]) -> list[str]:
    """Per reference version, the newest production version among ``names`` (by ``created``,
    then name): what the production drift monitor looks at. Incomplete versions are left out."""
    newest: dict[str, tuple[str, str]] = {}
    for name in names:
        version = root.version(name)
        if not version.is_complete():
            continue
        meta = version.meta()
        if meta.kind != "production" or not meta.reference:
            continue
        rank = (meta.created or "", name)
        if meta.reference not in newest or rank > newest[meta.reference]:
            newest[meta.reference] = rank
    return sorted(name for _, name in newest.values())
