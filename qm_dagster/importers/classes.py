"""Import a classification dataset: images in one sub-folder per class (ImageNet / torchvision
``ImageFolder`` layout) or with a CSV / JSON of ``file_name, label``, and a model's per-image
class probabilities (CSV, Parquet or JSON; ``classification.read_probabilities``)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from qm_dagster import classification, storage
from qm_dagster.dataset import Version
from qm_dagster.errors import DatasetError, QmError
from qm_dagster.importers.readers import Issue, Issues, read_names
from qm_dagster.layout import VersionWriter


def read_label_file(path: str) -> pd.DataFrame:
    """``file_name, label`` rows of a CSV, or of a JSON list of records / ``{file: label}``."""
    if Path(path).suffix.lower() != ".json":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        data = json.loads(Path(path).read_text())
        frame = pd.DataFrame(
            list(data.items()) if isinstance(data, dict) else data,
            columns=None if isinstance(data, list) else ["file_name", "label"],
        )
    missing = {"file_name", "label"} - set(frame.columns)
    if missing:
        raise DatasetError(path, "header", f"missing column(s) {sorted(missing)}")
    return frame[["file_name", "label"]].astype(str)


def folder_labels(files: list[str]) -> pd.DataFrame:
    """Labels from the layout: a file's first folder is its class."""
    labelled = [f for f in files if "/" in f]
    return pd.DataFrame(
        {"file_name": labelled, "label": [f.split("/", 1)[0] for f in labelled]}, dtype=str
    )


def _prediction_classes(path: str) -> list[str]:
    """The class columns of a CSV / Parquet probability file, in file order."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
    elif path.endswith(".json"):
        raise QmError("a JSON probability file names no classes: give --names")
    else:
        names = list(pd.read_csv(path, nrows=0).columns)
    return [n for n in names if n != "file_name"]


def _checked_labels(
    labels: pd.DataFrame, files: set[str], classes: list[str], issues: Issues, source: str
) -> pd.DataFrame:
    """Labels of existing images with a known class; the others are reported and left out
    (found with two vectorised lookups: a Python step only for the rows reported)."""
    missing = ~labels.file_name.isin(files).to_numpy()
    unknown = ~labels.label.isin(classes).to_numpy() & ~missing
    for i in np.flatnonzero(missing | unknown):
        where = f"line {i + 2}" if source.endswith(".csv") else f"[{i}]"
        name, label = labels.file_name.iloc[i], labels.label.iloc[i]
        reason = (
            f"label of {name}: no such image"
            if missing[i]
            else (f"label {label!r} of {name} is not a class")
        )
        issues.add(Issue(source, where, reason))
    return labels[~(missing | unknown)]


def import_classification(
    images: str,
    root: str,
    name: str,
    labels: str | None = None,
    names: str | None = None,
    predictions: str | None = None,
    model: str = "model",
    strict: bool = False,
    overwrite: bool = False,
    **meta: str | None,
) -> Version:
    """Write ``<root>/<name>/`` as a classification version and commit it. Class order: the
    ``names`` file, else the probability file's columns, else the sorted labels."""
    from qm_dagster.importers.convert import _image_files

    base = Path(images)
    files = _image_files(images)
    given = read_label_file(labels) if labels else folder_labels(files)
    classes = (
        read_names(names)
        or (_prediction_classes(predictions) if predictions else None)
        or sorted(set(given.label))
    )
    if not classes:
        raise QmError("no classes: give --names, class folders or a labels file")
    issues = Issues(strict)
    checked = _checked_labels(given, set(files), classes, issues, labels or images)
    writer = VersionWriter(root, name, overwrite=overwrite)
    for f in files:
        writer.add_image(f, (base / f).read_bytes())
    url = storage.join(writer.version.url, classification.LABELS_FILE)
    storage.write_bytes_atomic(url, checked.to_csv(index=False).encode())
    if predictions:
        _write_predictions(writer, predictions, model, classes, set(files), issues)
    if issues.items:
        writer.write_import_issues([vars(issue) for issue in issues.items])
    return writer.commit(task=classification.TASK, classes=classes, **meta)


def _write_predictions(
    writer: VersionWriter,
    path: str,
    model: str,
    classes: list[str],
    files: set[str],
    issues: Issues,
) -> None:
    """Validate one model's probabilities and store them as ``predictions/<model>.parquet``
    (rows of files that are not images of the version reported and left out)."""
    if not model or "/" in model or model.startswith("."):
        raise QmError(f"model name {model!r} must be a plain file stem")
    names, probs = classification.read_probabilities(path, classes)
    known = names.isin(files).to_numpy()
    for i in (i for i, ok in enumerate(known) if not ok):
        issues.add(Issue(path, f"row {i}", f"probabilities of {names.iloc[i]}: no such image"))
    frame = pd.DataFrame(probs[known], columns=classes)
    frame.insert(0, "file_name", names[known].to_numpy())
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    url = storage.join(writer.version.predictions_url, f"{model}.parquet")
    storage.write_bytes_atomic(url, buffer.getvalue())
