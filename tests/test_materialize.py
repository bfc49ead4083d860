"""Image metrics materialized through Dagster for real and demo versions, subsets and custom metrics."""

from __future__ import annotations

import dataclasses
import sys
import textwrap

import cv2
import dagster as dg
import numpy as np
import pytest

from qm_dagster import load
from qm_dagster.demo import write_demo
from qm_dagster.importers import import_version
from tests.conftest import coco_fake_spec, materialize_version, shared
from tests.test_image_metrics import reference_values


def _metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    events = [
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key
    ]
    assert len(events) == 1
    return {k: v.value for k, v in events[0].event_specific_data.materialization.metadata.items()}


def test_coco_version_from_shared_data(settings):
    src = shared("coco-val2014-fake100")
    import_version(
        coco_fake_spec(predictions=False),
        settings.datasets,
        "coco100",
        kind="validation",
    )
    settings = dataclasses.replace(settings, workers=2)
    result = materialize_version(settings, "coco100")
    assert result.success
    manifest = load("dataset/manifest", "coco100", settings)
    assert len(manifest) == 100 and manifest.ok.sum() == 54
    issues = load("dataset/data_issues", "coco100", settings)
    assert (issues.reason == "file not found").sum() == 46  # the images not shipped offline
    assert len(load("dataset/annotations", "coco100", settings)) == 839
    brightness = load("data/brightness", "coco100", settings).set_index("image_id").value
    sharp = load("data/sharpness", "coco100", settings).set_index("image_id").value
    width = load("data/width", "coco100", settings).set_index("image_id").value
    ok = manifest[manifest.ok].set_index("image_id")
    assert sorted(brightness.index) == sorted(ok.index)
    for image_id in list(ok.index)[::9]:
        bgr = cv2.imread(
            str(src / "images" / ok.loc[image_id, "file_name"]),
            cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
        )
        ref = reference_values(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        assert brightness[image_id] == pytest.approx(ref["brightness"], rel=1e-9)
        assert sharp[image_id] == pytest.approx(ref["sharpness"], rel=1e-9)
        assert width[image_id] == bgr.shape[1]
    meta = _metadata(result, "data/brightness")
    assert meta["images decoded"] == 54
    assert meta["dagster/row_count"] == 54
    assert meta["min"] == pytest.approx(brightness.min())
    assert meta["histogram"].startswith("![histogram](data:image/png;base64,")


def test_demo_versions(demo):
    settings = demo.settings
    assert all(run.success for run in demo.runs.values())
    train = load("data/brightness", "train", settings).value
    prod = load("data/brightness", "production", settings).value
    assert prod.median() < 0.6 * train.median()  # the production camera is darker...
    sharp_train = load("data/sharpness", "train", settings).value
    sharp_prod = load("data/sharpness", "production", settings).value
    assert sharp_prod.median() < 0.2 * sharp_train.median()  # ...and blurrier
    assert load("dataset/data_issues", "train", settings).empty
    annotations = load("dataset/annotations", "train", settings)
    assert set(annotations.category) == {"box", "disc", "triangle"}

    # the demo sequence: track 1 misses frame 4, track 2 turns disc -> box at frame 5,
    # track 3 turns from a triangle into a box at frame 6
    frames = load("dataset/manifest", "train", settings).set_index("image_id").frame_index
    tracks = annotations.set_index("annotation_id").track_id

    def flagged(asset: str) -> set[tuple[str, int]]:
        table = load(asset, "train", settings)
        hits = table[table.value > 0]
        return {
            (tracks[a], int(frames[i]))
            for a, i in zip(hits.annotation_id, hits.image_id, strict=True)
        }

    assert flagged("label/track_gap") == {("1", 5)}
    assert flagged("label/class_flip") == {("2", 5), ("3", 6)}
    shape = load("label/shape_similarity", "train", settings).dropna()
    worst = shape.sort_values("value").iloc[0]
    assert (tracks[worst.annotation_id], int(frames[worst.image_id])) == ("3", 6)

    # production photos are darkened, blurred, re-cropped copies of the training photos:
    # found as near duplicates against the reference version
    duplicates = load("analysis/duplicates", "production", settings)
    crossing = duplicates.groupby("group").version.nunique()
    assert (crossing == 2).sum() >= 5
    assert set(duplicates.kind) == {"near"}
    assert (
        load("model/match", "production", settings).value.mean()
        < load("model/match", "train", settings).value.mean()
    )


def test_object_pixel_metrics_of_predicted_objects(demo):
    """model/object_brightness of the demo detector's confident predictions (the demo's
    prediction_pixels) equals the gray mean of each predicted box (clipped to the image) read
    with OpenCV, and joins
    the prediction-level quality table."""
    settings = demo.settings
    table = load("model/object_brightness", "production", settings)
    predictions = load("dataset/predictions", "production", settings)
    confident = predictions[predictions.score >= settings.score_threshold]
    assert len(table) == len(confident) > 0
    assert set(table.prediction_id) == set(confident.prediction_id)
    manifest = load("dataset/manifest", "production", settings).set_index("image_id")
    boxes = confident.set_index("prediction_id")
    for row in table.iloc[:: max(1, len(table) // 12)].itertuples():
        box = boxes.loc[row.prediction_id]
        bgr = cv2.imread(manifest.url[row.image_id], cv2.IMREAD_COLOR)
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        x0, y0 = max(0, int(np.floor(box.bbox_x))), max(0, int(np.floor(box.bbox_y)))
        x1 = min(gray.shape[1], int(np.ceil(box.bbox_x + box.bbox_w)))
        y1 = min(gray.shape[0], int(np.ceil(box.bbox_y + box.bbox_h)))
        assert row.value == pytest.approx(gray[y0:y1, x0:x1].mean() / 255, rel=1e-9)
    wide = load("analysis/quality_table/prediction", "production", settings)
    joined = wide.set_index("prediction_id")["model/object_brightness"].dropna()
    assert (
        joined.sort_index().tolist() == table.set_index("prediction_id").value.sort_index().tolist()
    )


def test_subset_computes_only_what_is_selected(settings):
    write_demo(settings.datasets)
    materialize_version(
        settings,
        "validation",
        [dg.AssetKey(["dataset", "manifest"]), dg.AssetKey(["dataset", "annotations"])],
    )
    result = materialize_version(settings, "validation", [dg.AssetKey(["data", "brightness"])])
    keys = [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]
    assert keys == ["data/brightness"]
    n = len(load("dataset/manifest", "validation", settings))
    assert _metadata(result, "data/brightness")["images decoded"] == n
    header_only = materialize_version(
        settings, "validation", [dg.AssetKey(["data", "width"]), dg.AssetKey(["data", "area"])]
    )
    assert _metadata(header_only, "data/area")["images decoded"] == 0


CUSTOM = """
import numpy as np
from qm_dagster import metric

@metric(level="image", description="Share of pixels with R > G + B")
def redness_share(image):
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return float(np.mean(r > g + b))

@metric(level="image", description="Fails on purpose on tall images")
def picky(image):
    if image.shape[0] > image.shape[1]:
        raise ValueError("tall")
    return 1.0
"""


def test_custom_metric_joins_the_single_pass(settings, tmp_path, monkeypatch):
    (tmp_path / "my_metrics_mod.py").write_text(textwrap.dedent(CUSTOM))
    monkeypatch.syspath_prepend(str(tmp_path))
    write_demo(settings.datasets)
    settings = dataclasses.replace(settings, metric_modules=("my_metrics_mod",), workers=2)
    result = materialize_version(settings, "validation")
    assert result.success
    from definitions import build_definitions

    keys = build_definitions(settings).resolve_asset_graph().get_all_asset_keys()
    assert dg.AssetKey(["data", "redness_share"]) in keys
    manifest = load("dataset/manifest", "validation", settings)
    assert _metadata(result, "data/redness_share")["images decoded"] == len(manifest)
    assert _metadata(result, "data/brightness")["images decoded"] == len(manifest)  # same pass
    got = load("data/redness_share", "validation", settings).set_index("image_id").value
    row = manifest.iloc[0]
    rgb = cv2.cvtColor(cv2.imread(row.url), cv2.COLOR_BGR2RGB).astype(int)
    assert got[row.image_id] == pytest.approx(np.mean(rgb[..., 0] > rgb[..., 1] + rgb[..., 2]))
    picky = load("data/picky", "validation", settings)
    tall = manifest[manifest.height > manifest.width].image_id
    assert picky.set_index("image_id").value[tall].isna().all()  # the failure lost only its value
    assert _metadata(result, "data/picky")["failures"] == len(tall) > 0
    assert load("data/brightness", "validation", settings).value.notna().all()
    # regression: a configuration without the module must not inherit metrics this process imported
    plain = build_definitions(dataclasses.replace(settings, metric_modules=()))
    assert (
        dg.AssetKey(["data", "redness_share"])
        not in plain.resolve_asset_graph().get_all_asset_keys()
    )
    sys.modules.pop("my_metrics_mod", None)
