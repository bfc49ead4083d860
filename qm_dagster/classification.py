"""Classification versions: one class label per image and, per model, each image's class
probabilities.

Layout (``version.json`` says ``"task": "classification"`` and lists ``"classes"`` in order)::

    <version>/images/**                 the images (their relative path is the image id)
    <version>/classifications.csv       file_name,label: the ground truth (optional)
    <version>/predictions/<model>.csv   file_name and one probability column per class
                                        (.parquet alike; .json: [{"file_name", "probabilities"}])

Detection assets see such a version as unlabeled; the tables here are empty for a detection
version. Per image: the label's share of the version (``label/class_share``), each model's
confidence, margin, entropy, correctness and cleanlab's label quality (``model/class_*``,
``model/label_quality``); per model: cleanlab's label issues and accuracy, macro F1 and per-class
recall in every bucket of every image metric.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from qm_dagster import storage
from qm_dagster.dataset import CLASSIFICATION, PREDICTION_SUFFIXES, Version
from qm_dagster.errors import DatasetError
from qm_dagster.metrics.model import distribution_entropy, top_margin
from qm_dagster.quality_table import CLASS_COLUMN, PREDICTED

TASK = CLASSIFICATION
LABELS_FILE = "classifications.csv"
LABEL_COLUMNS = ["image_id", "label"]
PREDICTION_COLUMNS = ["model", "image_id", "predicted", "score", "probs"]
ISSUE_COLUMNS = [
    "model",
    "rank",
    "image_id",
    "label",
    "suggested",
    "label_quality",
    "suggested_probability",
]
EVALUATION_COLUMNS = [
    "model",
    "metric",
    "bucket",
    "lo",
    "hi",
    "n_images",
    "accuracy",
    "macro_f1",
    "recall",
]
# The per-image metric tables of a classification version: asset key -> description.
METRICS = {
    "label/class_share": "Share of the version's labelled images with this image's class",
    "model/class_confidence": "The model's top class probability for the image",
    "model/class_margin": "Top class probability minus the second (small = uncertain)",
    "model/class_entropy": "Shannon entropy (bits) of the model's class probabilities",
    "model/class_correct": "1 if the model's top class is the label, else 0",
    "model/label_quality": "cleanlab's label quality score (self-confidence): low = likely "
    "mislabelled",
}


def is_classification(version: Version) -> bool:
    return version.task() == TASK


def version_classes(version: Version) -> list[str]:
    """The class names of ``version.json``, in the order of the probability vectors."""
    classes = version.meta().extra.get("classes")
    ok = isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)
    if not ok or len(set(classes)) != len(classes):
        raise DatasetError(
            version.version_json_url,
            "classes",
            "a classification version needs a list of distinct, non-empty class names",
        )
    return classes


def empty_labels() -> pd.DataFrame:
    return pd.DataFrame({"image_id": pd.Series(dtype=str), "label": pd.Series(dtype=str)})


def empty_predictions() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=str) for c in ("model", "image_id", "predicted")})
    return frame.assign(score=pd.Series(dtype=float), probs=pd.Series(dtype=object))


def _read_table(url: str) -> pd.DataFrame:
    data = storage.read_bytes(url)
    if url.endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(data))
    return pd.read_csv(io.BytesIO(data), dtype={"file_name": str, "label": str})


def _row(frame: pd.DataFrame, position: int, url: str) -> str:
    """Where a row is, as users count it: a CSV's line (header = line 1), else the row."""
    return f"line {position + 2}" if url.endswith(".csv") else f"row {position}"


def read_labels(version: Version, image_ids: pd.Series) -> tuple[pd.DataFrame, list[str]]:
    """``classifications.csv`` as ``image_id, label`` rows of the version's images, and the
    files it labels that are not among them (left out). A label outside the classes, a file
    labelled twice or a missing column is an error naming the file and line."""
    url = storage.join(version.url, LABELS_FILE)
    if not storage.exists(url):
        return empty_labels(), []
    frame = _read_table(url)
    missing = {"file_name", "label"} - set(frame.columns)
    if missing:
        raise DatasetError(url, "header", f"missing column(s) {sorted(missing)}")
    classes = set(version_classes(version))
    unknown = np.flatnonzero(~frame.label.isin(classes).to_numpy())
    if unknown.size:
        i = int(unknown[0])
        raise DatasetError(
            url,
            _row(frame, i, url),
            f"label {frame.label.iloc[i]!r} is not one of the classes of version.json "
            f"({len(unknown)} such rows)",
        )
    twice = np.flatnonzero(frame.file_name.duplicated().to_numpy())
    if twice.size:
        i = int(twice[0])
        raise DatasetError(url, _row(frame, i, url), f"{frame.file_name.iloc[i]} labelled twice")
    known = frame.file_name.isin(set(image_ids))
    labels = frame.loc[known, ["file_name", "label"]].rename(columns={"file_name": "image_id"})
    return labels.reset_index(drop=True), frame.file_name[~known].tolist()


def prediction_files(version: Version) -> dict[str, str]:
    """``{model: url}`` of ``predictions/<model>.csv|.parquet|.json``."""
    out = {}
    for rel in storage.walk_files(version.predictions_url):
        for suffix in PREDICTION_SUFFIXES:
            if "/" not in rel and rel.endswith(suffix):
                out[rel[: -len(suffix)]] = storage.join(version.predictions_url, rel)
    return dict(sorted(out.items()))


def _json_probabilities(url: str, classes: list[str]) -> pd.DataFrame:
    records = json.loads(storage.read_bytes(url))
    if not isinstance(records, list):
        raise DatasetError(url, "", "expected a list of {file_name, probabilities} records")
    rows = []
    for i, record in enumerate(records):
        probs = record.get("probabilities") if isinstance(record, dict) else None
        if isinstance(probs, dict):
            probs = [probs.get(c, np.nan) for c in classes]
        if not isinstance(probs, list) or len(probs) != len(classes):
            raise DatasetError(
                url, f"[{i}]", f"probabilities must be {len(classes)} numbers (or a class dict)"
            )
        rows.append([record.get("file_name"), *probs])
    return pd.DataFrame(rows, columns=["file_name", *classes])


def read_probabilities(url: str, classes: list[str]) -> tuple[pd.Series, np.ndarray]:
    """One model's file names and class-probability matrix (rows normalised to sum 1).
    Negative, missing or all-zero probabilities are an error naming the file and row."""
    frame = _json_probabilities(url, classes) if url.endswith(".json") else _read_table(url)
    missing = [c for c in ["file_name", *classes] if c not in frame.columns]
    if missing:
        raise DatasetError(url, "header", f"missing column(s) {missing} (one per class)")
    probs = frame[classes].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    total = probs.sum(axis=1)
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | (total <= 0))
    if bad.size:
        raise DatasetError(
            url,
            _row(frame, int(bad[0]), url),
            "probabilities must be finite, non-negative numbers with a positive sum "
            f"({bad.size} such rows)",
        )
    twice = np.flatnonzero(frame.file_name.duplicated().to_numpy())
    if twice.size:
        i = int(twice[0])
        raise DatasetError(url, _row(frame, i, url), f"{frame.file_name.iloc[i]} predicted twice")
    return frame.file_name.astype(str), probs / total[:, None]


def read_predictions(version: Version, image_ids: pd.Series) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every model's predictions of the version's images (``PREDICTION_COLUMNS``), and per
    model how many rows named a file that is not an image of the version (left out)."""
    classes = version_classes(version)
    known = set(image_ids)
    frames, orphans = [], {}
    for model, url in prediction_files(version).items():
        names, probs = read_probabilities(url, classes)
        keep = names.isin(known).to_numpy()
        orphans[model] = int((~keep).sum())
        frames.append(predictions_frame(model, names[keep].to_numpy(), probs[keep], classes))
    if not frames:
        return empty_predictions(), orphans
    return pd.concat(frames, ignore_index=True), orphans


def predictions_frame(
    model: str, image_ids: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """Prediction rows of one model: top class, its probability and the whole vector."""
    top = probs.argmax(axis=1)
    return pd.DataFrame(
        {
            "model": model,
            "image_id": image_ids,
            "predicted": np.asarray(classes, dtype=object)[top],
            "score": probs[np.arange(len(top)), top],
            "probs": list(probs),
        }
    )


def probability_matrix(predictions: pd.DataFrame) -> np.ndarray:
    """The ``probs`` column as an ``n x classes`` matrix."""
    if not len(predictions):
        return np.zeros((0, 0))
    return np.stack(predictions.probs.to_numpy())


def label_share(labels: pd.DataFrame) -> pd.DataFrame:
    """``label/class_share``: per labelled image, the share of labelled images of its class."""
    shares = labels.label.map(labels.label.value_counts(normalize=True))
    return pd.DataFrame({"image_id": labels.image_id, "value": shares.to_numpy(float)})


def _label_indices(labels: pd.DataFrame, image_ids: pd.Series, classes: list[str]) -> np.ndarray:
    """Each image's label as a class index (-1: no label)."""
    index = pd.Series(np.arange(len(classes)), index=classes)
    by_image = labels.set_index("image_id").label.map(index)
    return by_image.reindex(image_ids).fillna(-1).to_numpy(np.int64)


def model_metrics(
    labels: pd.DataFrame, predictions: pd.DataFrame, classes: list[str]
) -> dict[str, pd.DataFrame]:
    """The ``model/...`` tables of ``METRICS`` (``model, image_id, value``); correctness and
    label quality only for labelled images."""
    out: dict[str, list[pd.DataFrame]] = {k: [] for k in METRICS if k.startswith("model/")}
    for model, rows in predictions.groupby("model", sort=True):
        p = probability_matrix(rows)
        y = _label_indices(labels, rows.image_id, classes)
        values = {
            "model/class_confidence": p.max(axis=1),
            "model/class_margin": top_margin(p) if p.shape[1] > 1 else np.ones(len(p)),
            "model/class_entropy": distribution_entropy(p),
        }
        for key, value in values.items():
            out[key].append(_table(model, rows.image_id, value))
        has = y >= 0
        correct = (p[has].argmax(axis=1) == y[has]).astype(float)
        out["model/class_correct"].append(_table(model, rows.image_id[has], correct))
        if has.any():
            from cleanlab.rank import get_label_quality_scores  # 0.6 s: only when needed

            quality = get_label_quality_scores(y[has], p[has])
            out["model/label_quality"].append(_table(model, rows.image_id[has], quality))
    empty = pd.DataFrame({"model": [], "image_id": [], "value": []})
    return {k: pd.concat(v, ignore_index=True) if v else empty for k, v in out.items()}


def _table(model: str, image_ids: pd.Series, values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"model": model, "image_id": image_ids.to_numpy(), "value": values})


def label_issues(
    labels: pd.DataFrame, predictions: pd.DataFrame, classes: list[str]
) -> pd.DataFrame:
    """Per model, cleanlab's label issues (``filter.find_label_issues``: confident learning,
    pruned by noise rate) ranked by its label quality score, worst first, with the class the
    model suggests instead."""
    parts = []
    for model, rows in predictions.groupby("model", sort=True):
        y = _label_indices(labels, rows.image_id, classes)
        has = y >= 0
        present = np.unique(y[has])
        if has.sum() < 2 or present.size < 2:
            continue
        # imported only when there is something to rank (0.6 s; detection versions never do)
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        p, y = probability_matrix(rows)[has], y[has]
        # cleanlab estimates per-class noise rates: classes without a labelled image are
        # left out of the probabilities it sees (renormalised), and mapped back after
        p_seen = p[:, present] / p[:, present].sum(axis=1, keepdims=True)
        y_seen = np.searchsorted(present, y)
        flagged = find_label_issues(
            y_seen, p_seen, return_indices_ranked_by="self_confidence", n_jobs=1
        )
        quality = get_label_quality_scores(y, p)  # as model/label_quality
        suggested = p.argmax(axis=1)[flagged]
        parts.append(
            pd.DataFrame(
                {
                    "model": model,
                    "rank": np.arange(1, len(flagged) + 1),
                    "image_id": rows.image_id.to_numpy()[has][flagged],
                    "label": np.asarray(classes, dtype=object)[y[flagged]],
                    "suggested": np.asarray(classes, dtype=object)[suggested],
                    "label_quality": quality[flagged],
                    "suggested_probability": p[flagged, suggested],
                }
            )
        )
    if not parts:
        return pd.DataFrame({c: [] for c in ISSUE_COLUMNS})
    return pd.concat(parts, ignore_index=True)[ISSUE_COLUMNS]


def image_columns(labels: pd.DataFrame, predictions: pd.DataFrame) -> list[pd.Series]:
    """The image quality table's class columns, indexed by image id: ``class`` (the label)
    and ``predicted@<model>`` (each model's top class)."""
    columns = [labels.set_index("image_id").label.rename(CLASS_COLUMN)] if len(labels) else []
    for model, rows in predictions.groupby("model", sort=True):
        columns.append(rows.set_index("image_id").predicted.rename(f"{PREDICTED}@{model}"))
    return columns


def scores(confusion: np.ndarray) -> tuple[float, float, dict[int, float]]:
    """Accuracy, macro F1 and per-class recall of a ``classes x classes`` confusion matrix
    (rows: label, columns: prediction), as scikit-learn defines them: macro F1 averages the
    classes that are labelled or predicted; recall is given for labelled classes only."""
    n = confusion.sum()
    tp = np.diag(confusion).astype(float)
    labelled, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    seen = (labelled + predicted) > 0
    f1 = 2 * tp[seen] / (labelled[seen] + predicted[seen])
    recall = {int(c): float(tp[c] / labelled[c]) for c in np.flatnonzero(labelled)}
    accuracy = float(tp.sum() / n) if n else float("nan")
    return accuracy, float(f1.mean()) if f1.size else float("nan"), recall


def class_evaluation(
    slices: list[tuple[dict[str, object], np.ndarray]],
    labels: pd.DataFrame,
    predictions: pd.DataFrame,
    classes: list[str],
) -> pd.DataFrame:
    """Per model, accuracy, macro F1 and per-class recall (JSON ``{class: recall}``) on the
    whole version (metric ``all``) and on every slice (``sliced.image_slices``: the buckets
    of every image metric and the named slices): one confusion matrix per slice, by
    ``np.bincount`` over the slice's labelled, predicted images, instead of scikit-learn's
    per-call validation (tests check every row against ``sklearn.metrics``). ``classes``:
    every class name the labels and predictions use, in any order."""
    k = len(classes)
    index = pd.Series(np.arange(k), index=classes)
    rows = []
    for model, preds in predictions.groupby("model", sort=True):
        y = _label_indices(labels, preds.image_id, classes)
        has = y >= 0
        ids = pd.Index(preds.image_id.to_numpy()[has])
        codes = y[has] * k + preds.predicted.map(index).to_numpy(np.int64)[has]
        whole = ({"metric": "all", "bucket": 0}, ids.to_numpy())
        for row, members in [whole, *slices]:
            at = ids.get_indexer(pd.Index(members).unique())
            at = at[at >= 0]
            confusion = np.bincount(codes[at], minlength=k * k).reshape(k, k)
            accuracy, macro_f1, recall = scores(confusion)
            rows.append(
                {
                    "model": model,
                    **row,
                    "n_images": int(at.size),
                    "accuracy": accuracy,
                    "macro_f1": macro_f1,
                    "recall": json.dumps({classes[c]: r for c, r in recall.items()}),
                }
            )
    frame = pd.DataFrame(rows, columns=EVALUATION_COLUMNS)
    return frame.astype({"lo": float, "hi": float})
