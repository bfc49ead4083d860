"""Test cases as data: a YAML file of checks on drift, outliers, sliced evaluation, annotators
and a classification version's accuracy by slice.

```yaml
checks:
  - name: ap50_on_dark_images          # becomes the Dagster asset check's name
    target: sliced_evaluation          # sliced_evaluation | drift | outliers
    model: demo_detector
    metric: data/brightness
    bucket: 0                          # the lowest quantile bucket (or "all": the whole version)
    stat: AP50                         # any column of the table (AP, AP50, AP75, AR100, recall...)
    iou_type: bbox                     # or segm (models with masks), keypoints (OKS)
    op: ">="
    value: 0.5
    severity: ERROR                    # ERROR or WARN (default)
  - name: no_brightness_drift
    target: drift
    metric: data/brightness            # passes unless the verdict is "drift"
  - name: few_severe_outliers
    target: outliers
    stat: severe_share                 # share of images with a severe outlier on any metric
    op: "<="
    value: 0.02
  - name: careful_annotators
    target: annotators
    stat: found@demo_detector          # any column of analysis/annotators
    annotator: ""                      # one annotator, or empty: every annotator
    op: ">="
    value: 0.5
  - name: accurate_on_small_crops     # a classification version
    target: class_evaluation
    model: my_classifier
    metric: data/area
    bucket: 0
    stat: accuracy                     # or macro_f1
    op: ">="
    value: 0.8
  - name: few_dark_or_bright_outliers
    target: outliers
    metric: data/brightness            # only this metric's severe outliers
    stat: severe_share
    op: "<="
    value: 0.05
```
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import pandas as pd
import yaml

from qm_dagster.errors import QmError

TARGETS = {
    "sliced_evaluation": "analysis/sliced_evaluation",
    "drift": "analysis/drift",
    "outliers": "analysis/outliers",
    "annotators": "analysis/annotators",
    "class_evaluation": "analysis/class_evaluation",  # stat: accuracy, macro_f1, n_images
}
IOU_TYPES = ("bbox", "segm", "keypoints")  # the evaluations sliced_evaluation makes
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
_NAME = re.compile(r"^[A-Za-z0-9_]{1,60}$")


@dataclass(frozen=True)
class Check:
    name: str
    target: str
    metric: str = ""
    model: str = ""
    bucket: str = "all"
    iou_type: str = "bbox"
    annotator: str = ""  # annotators: this one; empty = every annotator (the worst value)
    stat: str = ""
    op: str = ">="
    value: float = 0.0
    severity: str = "WARN"
    description: str = ""

    @property
    def asset_key(self) -> str:
        return TARGETS[self.target]


@dataclass(frozen=True)
class Outcome:
    passed: bool
    measured: float | None
    text: str


def load_checks(path: str) -> list[Check]:
    """Parse and validate a checks file; errors name the file, the check and the problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise QmError(f"checks file {path}: {exc}") from exc
    items = doc.get("checks", []) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise QmError(f"checks file {path}: expected a top-level 'checks' list")
    out, names = [], set()
    for i, item in enumerate(items):
        where = f"checks file {path}, checks[{i}]"
        if not isinstance(item, dict):
            raise QmError(f"{where}: expected a mapping")
        try:
            check = Check(**{k: (str(v) if k == "bucket" else v) for k, v in item.items()})
        except TypeError as exc:
            raise QmError(f"{where}: {exc}") from exc
        if not _NAME.match(check.name) or check.name in names:
            raise QmError(f"{where}: name {check.name!r} must be unique, letters, digits, _")
        if check.target not in TARGETS:
            raise QmError(f"{where}: 'target' must be one of {sorted(TARGETS)}")
        if check.iou_type not in IOU_TYPES:
            raise QmError(f"{where}: 'iou_type' must be one of {list(IOU_TYPES)}")
        if check.op not in OPS or check.severity not in ("WARN", "ERROR"):
            raise QmError(f"{where}: op must be one of {sorted(OPS)}, severity WARN or ERROR")
        names.add(check.name)
        out.append(check)
    return out


def evaluate(check: Check, frame: pd.DataFrame, images: int | None = None) -> Outcome:
    """Whether ``frame`` (the target asset's table for one version) passes ``check``."""
    if check.target == "drift":
        rows = frame[frame.metric == check.metric]
        if rows.empty:
            return Outcome(True, None, f"no drift row for {check.metric} (no reference?)")
        verdict = str(rows.verdict.iloc[0])
        return Outcome(verdict != "drift", None, f"{check.metric}: {verdict}")
    if check.target == "outliers":
        severe = frame[(frame.severity == "severe") & (frame.level == "image")]
        if check.metric:
            severe = severe[severe.metric == check.metric]
        share = severe.image_id.nunique() / images if images else 0.0
        on = f" on {check.metric}" if check.metric else ""
        return _compare(check, share, f"severe share{on} {share:.3f}")
    if check.target == "annotators":
        return _annotators(check, frame)
    rows = frame[(frame.model == check.model) & (frame.metric == (check.metric or "all"))]
    if "iou_type" in rows:
        rows = rows[rows.iou_type == check.iou_type]
    if check.bucket != "all":
        rows = rows[rows.bucket.astype(str) == check.bucket]
    if rows.empty:
        where = f"{check.model}/{check.metric}/{check.bucket} ({check.iou_type})"
        return Outcome(False, None, f"no slice {where}")
    value = float(rows[check.stat].iloc[0])
    return _compare(check, value, f"{check.stat} = {value:.4f}")


def _annotators(check: Check, frame: pd.DataFrame) -> Outcome:
    """The check on one annotator's ``stat``, or on every annotator's (measured: the one
    furthest on the failing side)."""
    rows = frame[frame.annotator == check.annotator] if check.annotator else frame
    if rows.empty or check.stat not in rows:
        who = check.annotator or "any annotator"
        return Outcome(False, None, f"no {check.stat!r} for {who}")
    values = rows[check.stat].astype(float)
    worst = values.idxmin() if check.op in (">=", ">") else values.idxmax()
    name = rows.annotator[worst]
    return _compare(check, float(values[worst]), f"{check.stat} of {name} = {values[worst]:.4f}")


def _compare(check: Check, value: float, text: str) -> Outcome:
    passed = bool(OPS[check.op](value, float(check.value)))
    return Outcome(passed, value, f"{text} (expected {check.op} {check.value})")
