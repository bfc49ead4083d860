"""Outliers: fences equal numpy percentiles, planted outliers are found, degenerate distributions
and per-class fences behave; the wide quality tables join every metric on the right rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from qm_dagster.outliers import all_outliers, fences, metric_outliers, multivariate_scores
from qm_dagster.quality_table import image_table, object_table


def test_fences_are_numpy_percentiles():
    values = np.random.default_rng(0).normal(10, 2, 501)
    f = fences(values)
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    assert (f["q1"], f["q3"]) == (q1, q3)
    assert f["moderate_low"] == q1 - 1.5 * (q3 - q1) and f["severe_high"] == q3 + 3 * (q3 - q1)


def test_planted_outliers_are_found_with_their_severity():
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 0.05, 300)
    q1, q3 = np.percentile(values, [25, 75])
    iqr = q3 - q1
    planted = {300: q3 + 2.0 * iqr, 301: q1 - 2.0 * iqr, 302: q3 + 10 * iqr}
    frame = pd.DataFrame({"image_id": range(303), "value": [*values, *planted.values()]})
    found = metric_outliers("image", "data/brightness", frame.assign(key=frame.image_id), "key")
    sev = dict(zip(found.key, found.severity, strict=True))
    assert sev[300] == "moderate" and sev[301] == "moderate" and sev[302] == "severe"
    # nothing inside the recomputed fences is flagged
    q1, q3 = np.percentile(frame.value, [25, 75])
    inside = frame[(frame.value >= q1 - 1.5 * (q3 - q1)) & (frame.value <= q3 + 1.5 * (q3 - q1))]
    assert not set(inside.image_id) & set(found.key)


def test_degenerate_distribution_flags_only_values_off_the_bulk():
    frame = pd.DataFrame({"image_id": range(50), "value": [0.0] * 48 + [1.0, 2.0]})
    found = metric_outliers("image", "data/red", frame.assign(key=frame.image_id), "key")
    assert sorted(found.key) == [48, 49]


def test_object_metrics_are_fenced_per_class_too():
    rng = np.random.default_rng(2)
    small = rng.normal(100, 5, 60)
    large = rng.normal(10_000, 300, 60)
    frame = pd.DataFrame(
        {
            "annotation_id": range(121),
            "image_id": 1,
            "category": ["cat"] * 60 + ["bus"] * 60 + ["cat"],
            "value": [*small, *large, 2000.0],
        }
    )  # a huge cat, an ordinary size overall
    out = all_outliers({"label/object_area": frame})
    cat = out[out.scope == "class:cat"]
    assert 120 in set(cat.key)
    assert 120 not in set(out[out.scope == "all"].key)


def test_isolation_forest_flags_the_odd_row():
    rng = np.random.default_rng(3)
    table = pd.DataFrame({"a": rng.normal(0, 1, 200), "b": rng.normal(0, 1, 200)})
    table.loc[200] = [8.0, -8.0]
    scores = multivariate_scores(table, ["a", "b"])
    assert scores.score.idxmax() == 200 and bool(scores.flagged[200])


def test_quality_tables_join_on_the_right_rows():
    manifest = pd.DataFrame(
        {"image_id": [1, 2], "file_name": ["a", "b"], "width": 10, "height": 10, "ok": True}
    )
    annotations = pd.DataFrame(
        {
            "annotation_id": [7, 8, 9],
            "image_id": [1, 1, 2],
            "category": ["x", "y", "x"],
            "iscrowd": 0,
        }
    )
    metrics = {
        "data/brightness": pd.DataFrame({"image_id": [2, 1], "value": [0.2, 0.1]}),
        "label/object_area": pd.DataFrame(
            {
                "annotation_id": [9, 7, 8],
                "image_id": [2, 1, 1],
                "category": ["x", "x", "y"],
                "value": [5.0, 1.0, 3.0],
            }
        ),
        "model/entropy": pd.DataFrame({"model": "m", "image_id": [1, 2], "value": [0.5, 0.7]}),
    }
    img = image_table(manifest, metrics).set_index("image_id")
    assert img.loc[1, "data/brightness"] == 0.1 and img.loc[2, "data/brightness"] == 0.2
    assert (
        img.loc[1, "label/object_area:mean"] == 2.0 and img.loc[1, "label/object_area:max"] == 3.0
    )
    assert img.loc[2, "model/entropy@m"] == 0.7
    obj = object_table(annotations, metrics).set_index("annotation_id")
    assert obj.loc[8, "label/object_area"] == 3.0 and obj.loc[9, "data/brightness"] == 0.2
