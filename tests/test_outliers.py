"""Outliers: fences equal numpy percentiles (Tukey, the medcouple-adjusted boxplot, log scale),
planted outliers are found, the real COCO objects' areas are not 9% severe outliers any more,
degenerate distributions and per-class fences behave; the wide quality tables join every metric
on the right rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.stattools import medcouple

from qm_dagster.medcouple import medcouple as fast_medcouple
from qm_dagster.metrics import load_metrics
from qm_dagster.outliers import (
    MIN_CLASS_OBJECTS,
    all_outliers,
    fences,
    metric_outliers,
    multivariate_scores,
    rules,
    sampled_medcouple,
)
from qm_dagster.quality_table import image_table, metric_frames, object_table, prediction_table
from tests.real_objects import coco_objects

load_metrics()


def test_fences_are_numpy_percentiles():
    values = np.random.default_rng(0).normal(10, 2, 501)
    f = fences(values, "tukey")
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
    found = metric_outliers(
        "image", "data/brightness", frame.assign(key=frame.image_id), "key", rule="tukey"
    )
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


def test_object_metrics_are_fenced_per_class_with_enough_objects():
    rng = np.random.default_rng(2)
    small = rng.normal(100, 5, 60)
    large = rng.normal(10_000, 300, 60)
    frame = pd.DataFrame(
        {
            "annotation_id": range(126),
            "image_id": 1,
            "category": ["cat"] * 60 + ["bus"] * 60 + ["cat"] + ["dog"] * 5,
            "value": [*small, *large, 2000.0, *rng.normal(100, 5, 4), 2000.0],
        }
    )  # a huge cat, an ordinary size overall; a huge dog among too few dogs to fence
    out = all_outliers({"label/object_area": frame})
    cat = out[out.scope == "class:cat"]
    assert 120 in set(cat.key)
    assert 120 not in set(out[out.scope == "all"].key)
    assert MIN_CLASS_OBJECTS > 6 and "class:dog" not in set(out.scope)


def test_adjusted_fences_stretch_the_long_side_by_the_statsmodels_medcouple():
    rng = np.random.default_rng(6)
    for values in (rng.lognormal(0, 1, 800), -rng.lognormal(0, 1, 800)):
        f = fences(values, "adjusted")
        q1, q3 = np.percentile(values, [25, 75])
        mc, iqr = medcouple(values), q3 - q1
        low, high = (1.0, np.exp(3 * mc)) if mc >= 0 else (np.exp(-3 * mc), 1.0)
        assert f["moderate_low"] == pytest.approx(q1 - 1.5 * low * iqr, rel=1e-12)
        assert f["moderate_high"] == pytest.approx(q3 + 1.5 * high * iqr, rel=1e-12)
        assert f["severe_high"] == pytest.approx(q3 + 3 * high * iqr, rel=1e-12)
    symmetric = rng.normal(0, 1, 1001)
    tied = np.round(rng.lognormal(0, 1, 1500), 1)  # many values on the median
    assert sampled_medcouple(tied) == pytest.approx(medcouple(tied), abs=1e-12)
    assert (
        abs(fences(symmetric, "adjusted")["moderate_high"] - fences(symmetric)["moderate_high"])
        < 0.1
    )


def test_medcouple_equals_statsmodels():
    """The compiled selection against statsmodels' full-kernel estimator (the reference), bit
    for bit: skewed both ways, odd and even sizes, many values on the median, few distinct
    values, and 400 small random samples (2 to 80 values, half of them heavily tied)."""
    rng = np.random.default_rng(11)
    cases = [
        rng.lognormal(0, 1, 2000),
        -rng.lognormal(0, 1, 1999),
        np.round(rng.lognormal(0, 1, 2000), 1),
        np.round(rng.normal(0, 1, 2001), 1),
        rng.integers(0, 3, 600).astype(float),
        np.array([1.0, 2.0, 2.0, 2.0, 9.0]),
        np.array([3.0, 1.0]),
    ]
    for i in range(400):
        n = int(rng.integers(2, 81))
        tied = rng.integers(0, 4, n).astype(float)
        cases.append(tied if i % 2 else rng.exponential(1, n))
    for values in cases:
        assert fast_medcouple(values) == float(medcouple(values, use_fast=False))


def test_log_fences_are_tukey_on_the_logarithm():
    values = np.random.default_rng(7).lognormal(5, 2, 500)
    f = fences(np.r_[values, 0.0], "log")
    q1, q3 = np.percentile(np.log(values), [25, 75])
    assert f["severe_high"] == pytest.approx(np.exp(q3 + 3 * (q3 - q1)), rel=1e-12)
    frame = pd.DataFrame({"image_id": range(501), "value": np.r_[values, 0.0]})
    found = metric_outliers(
        "image", "data/sharpness", frame.assign(key=frame.image_id), "key", rule="log"
    )
    assert found.set_index("key").loc[500, "severity"] == "severe"  # a flat image


def test_real_coco_areas_are_not_a_tenth_severe_and_planted_ones_are_found():
    objects = coco_objects().rename(columns={"label/object_area": "value"})
    rule = rules(["label/object_area"])["label/object_area"]
    values = objects.value.to_numpy()
    q1, q3 = np.percentile(values, [25, 75])
    tukey_severe = np.mean(values > q3 + 3 * (q3 - q1))
    assert tukey_severe > 0.05  # plain Tukey fences call the long tail of sizes severe
    found = metric_outliers("object", "label/object_area", objects, "annotation_id", rule=rule)
    assert (found.severity == "severe").sum() / len(objects) <= 0.03
    planted = pd.DataFrame(
        {"annotation_id": [-1, -2], "image_id": 0, "value": [values.max() * 100, 0.5]}
    )
    found = metric_outliers(
        "object", "label/object_area", pd.concat([objects, planted]), "annotation_id", rule=rule
    ).set_index("key")
    assert rule == "log" and set(found.loc[[-1, -2], "severity"]) <= {"moderate", "severe"}


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


def test_isolation_forest_flags_few_real_objects_but_the_planted_one():
    objects = coco_objects()
    columns = [c for c in objects.columns if c.startswith("label/")]
    planted = objects.iloc[[0]].assign(
        **{"label/object_area": 5e6, "label/object_brightness": 0.0, "label/relative_area": 16.0}
    )
    table = pd.concat([objects, planted], ignore_index=True)
    scores = multivariate_scores(table, columns, rules(columns))
    assert scores.flagged.iloc[-1] and scores.severity.iloc[-1] == "severe"
    assert scores.flagged.mean() <= 0.05
    high = np.percentile(scores.score, 75) + 1.5 * np.subtract(
        *np.percentile(scores.score, [75, 25])
    )
    assert scores.flagged.equals(scores.score > high)


def test_zero_inflated_metrics_are_fenced_above_their_point_mass():
    rng = np.random.default_rng(8)
    values = np.r_[np.zeros(700), rng.lognormal(-4, 1, 300)]  # a colour share: mostly none
    f = fences(values, "adjusted")
    above = values[values > 0]
    q1, q3 = np.percentile(above, [25, 75])
    stretch = np.exp(3 * medcouple(above))
    assert f["floor"] == 0 and f["moderate_high"] == pytest.approx(q3 + 1.5 * stretch * (q3 - q1))
    frame = pd.DataFrame({"image_id": range(1001), "value": np.r_[values, 0.9]})
    found = metric_outliers("image", "data/green", frame.assign(key=frame.image_id), "key")
    assert 1000 in set(found.key) and not set(found.key) & set(range(700))
    assert (found.severity == "severe").mean() * len(found) / len(frame) <= 0.03
    # plain Tukey on every value puts the fence next to zero and calls much of the tail severe
    q1, q3 = np.percentile(values, [25, 75])
    assert np.mean(values > q3 + 3 * (q3 - q1)) > 0.1


def test_metric_frames_read_every_metric_back_from_the_wide_tables():
    """Outliers read the metrics from the three wide tables: each metric's rows come back as
    its own asset stored them (image, object, prediction level, and per-model image metrics)."""
    manifest = pd.DataFrame({"image_id": [1, 2], "file_name": ["a", "b"], "ok": True})
    annotations = pd.DataFrame(
        {"annotation_id": [7, 8], "image_id": [1, 2], "category": ["x", "y"], "iscrowd": 0}
    )
    predictions = pd.DataFrame(
        {
            "model": ["m", "n", "n"],
            "prediction_id": [1, 1, 2],
            "image_id": [1, 1, 2],
            "category": ["x", "x", "y"],
            "score": [0.9, 0.8, 0.3],
        }
    )
    metrics = {
        "data/brightness": pd.DataFrame({"image_id": [2, 1], "value": [0.2, 0.1]}),
        "label/object_area": pd.DataFrame(
            {
                "annotation_id": [8, 7],
                "image_id": [2, 1],
                "category": ["y", "x"],
                "value": [5.0, 1.0],
            }
        ),
        "model/iou": predictions[["model", "prediction_id", "image_id", "category"]].assign(
            value=[0.7, 0.6, 0.0]
        ),
        "model/entropy": pd.DataFrame(
            {"model": ["m", "m", "n", "n"], "image_id": [1, 2, 1, 2], "value": [0.5, 0.7, 0.1, 0.3]}
        ),
    }
    frames = metric_frames(
        sorted(metrics),
        image_table(manifest, metrics),
        object_table(annotations, metrics),
        prediction_table(predictions, metrics),
    )
    assert sorted(frames) == sorted(metrics)
    for key, stored in metrics.items():
        back = frames[key].dropna(subset=["value"])
        assert sorted(back.columns) == sorted(stored.columns), key
        order = sorted(stored.columns)
        expected = stored[order].sort_values(order).reset_index(drop=True)
        pd.testing.assert_frame_equal(
            back[order].sort_values(order).reset_index(drop=True), expected, check_dtype=False
        )


def test_a_metric_in_its_tables_row_order_or_not_joins_to_the_same_columns():
    """A metric table in the order of the rows it measured is taken as it is; one in another
    order, or with a row missing, is matched on its keys: the wide tables are the same."""
    predictions = pd.DataFrame(
        {"model": ["a", "a", "b", "b"], "prediction_id": [1, 2, 1, 3], "image_id": [1, 1, 2, 2],
         "category": "x", "score": [0.9, 0.8, 0.7, 0.6]}
    )  # fmt: skip
    keys = predictions[["model", "prediction_id"]]
    in_order = keys.assign(value=[0.1, 0.2, 0.3, 0.4])
    shuffled = in_order.iloc[[2, 0, 3, 1]]
    partial = in_order.iloc[[3, 0]]
    tables = [
        prediction_table(predictions, {"model/iou": frame})
        for frame in (in_order, shuffled, partial)
    ]
    assert tables[0]["model/iou"].tolist() == [0.1, 0.2, 0.3, 0.4]
    pd.testing.assert_frame_equal(tables[1], tables[0])
    assert tables[2]["model/iou"].tolist()[0] == 0.1 and tables[2]["model/iou"].isna().sum() == 2
    assert tables[2]["model/iou"].tolist()[3] == 0.4
    annotations = pd.DataFrame(
        {"annotation_id": [7, 8, 9], "image_id": [1, 1, 2], "category": "x", "iscrowd": 0}
    )
    area = pd.DataFrame({"annotation_id": [9, 7, 8], "value": [5.0, 1.0, 3.0]})
    objects = object_table(annotations, {"label/object_area": area})
    assert objects["label/object_area"].tolist() == [1.0, 3.0, 5.0]
