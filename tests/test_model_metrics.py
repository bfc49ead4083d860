"""Model metrics: COCO match status equals pycocotools' own evaluation, acquisition functions by
hand, custom prediction metrics, and new predictions re-run only model assets (zero decodes)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import qm_dagster.passes.decode
from qm_dagster import load
from qm_dagster.dataset import DatasetRoot
from qm_dagster.demo import write_demo
from qm_dagster.importers import ImportSpec, import_version
from qm_dagster.manifest import build_manifest
from qm_dagster.matching import matching
from qm_dagster.metrics import load_metrics, metrics
from qm_dagster.metrics.model import _variance, distribution_entropy, probabilities, top_margin
from qm_dagster.table_pass import model_metrics
from tests.conftest import cartucho_spec, coco_fake_spec, materialize_version, shared

load_metrics()


def pycocotools_status(gt_file: str, dt_file: str) -> dict[int, str]:
    """Per result id: tp / fp / ignored from a default COCOeval (IoU 0.5, area all, maxDets 100)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_file)
        dt = gt.loadRes(dt_file)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
    t = list(ev.params.iouThrs).index(0.5)
    status = {}
    for e in ev.evalImgs:
        if e is None or e["aRng"] != ev.params.areaRng[0] or e["maxDet"] != 100:
            continue
        for d, m, ig in zip(e["dtIds"], e["dtMatches"][t], e["dtIgnore"][t], strict=True):
            status[int(d)] = "ignored" if ig else ("tp" if m > 0 else "fp")
    return status


def ours(root: str, name: str) -> pd.DataFrame:
    version = DatasetRoot(root).version(name)
    coco = version.instances()
    manifest = build_manifest(version, 10**8, table=coco.images).images
    preds = pd.concat([version.predictions(m, coco) for m in version.prediction_files()])
    specs = [s for s in metrics("prediction", ()) if s.name in ("match", "iou", "confidence")]
    matches = matching(manifest, coco.annotations, coco.categories, preds)
    tables = model_metrics(specs, manifest, coco.annotations, preds, matches)
    return tables["model/match"].merge(
        tables["model/iou"], on=["model", "prediction_id"], suffixes=("", "_iou")
    )


def _compare(frame: pd.DataFrame, expected: dict[int, str]) -> None:
    got = dict(zip(frame.prediction_id, frame.value, strict=True))
    assert len(expected) > 0
    for pid, status in expected.items():
        want = {"tp": 1.0, "fp": 0.0, "ignored": np.nan}[status]
        assert got[pid] == pytest.approx(want, nan_ok=True), pid
    missing = set(got) - set(expected)  # beyond maxDets: no status in pycocotools either
    assert all(np.isnan(got[p]) for p in missing)


def test_match_equals_pycocotools_on_coco_fake_results(tmp_path):
    src = shared("coco-val2014-fake100")
    gt, dt = (
        src / "instances_val2014_100.json",
        src / "results" / "instances_val2014_fakebbox100_results.json",
    )
    import_version(
        ImportSpec(
            images=str(src / "images"),
            format="coco",
            labels=str(gt),
            predictions=str(dt),
            pred_format="coco",
            model="fake",
        ),
        str(tmp_path),
        "v",
    )
    frame = ours(str(tmp_path), "v")
    expected = pycocotools_status(str(gt), str(dt))
    _compare(frame, expected)
    assert len(frame) == 734


def test_match_equals_pycocotools_on_cartucho(tmp_path):
    import_version(
        cartucho_spec(),
        str(tmp_path),
        "c",
    )
    frame = ours(str(tmp_path), "c")
    expected = pycocotools_status(
        str(tmp_path / "c" / "annotations.json"),
        str(tmp_path / "c" / "predictions" / "detector.json"),
    )
    _compare(frame, expected)
    assert len(frame) == 494


def _tiny_tables(scores_vectors=None):
    images = pd.DataFrame(
        {
            "image_id": [1, 2],
            "width": 100,
            "height": 100,
            "coco_width": 100,
            "coco_height": 100,
            "ok": True,
        }
    )
    ann = pd.DataFrame(
        {
            "annotation_id": [10, 11],
            "image_id": [1, 1],
            "category_id": [1, 2],
            "category": ["cat", "dog"],
            "bbox_x": [0.0, 50.0],
            "bbox_y": [0.0, 50.0],
            "bbox_w": [10.0, 20.0],
            "bbox_h": [10.0, 20.0],
            "area": [100.0, 400.0],
            "iscrowd": 0,
            "segmentation": None,
            "keypoints": None,
            "track_id": None,
        }
    )
    preds = pd.DataFrame(
        {
            "model": "m",
            "prediction_id": [1, 2, 3],
            "image_id": [1, 1, 2],
            "category_id": [1, 1, 2],
            "category": ["cat", "cat", "dog"],
            "bbox_x": [0.0, 50.0, 5.0],
            "bbox_y": [0.0, 50.0, 5.0],
            "bbox_w": [10.0, 20.0, 5.0],
            "bbox_h": [10.0, 20.0, 5.0],
            "score": [0.9, 0.6, 0.2],
            "segmentation": None,
            "track_id": None,
            "scores": scores_vectors or [None, None, None],
        }
    )
    cats = pd.DataFrame({"category_id": [1, 2], "category": ["cat", "dog"], "supercategory": ""})
    return images, ann, cats, preds


def test_small_case_by_hand():
    images, ann, cats, preds = _tiny_tables()
    specs = metrics("prediction", ())
    out = model_metrics(specs, images, ann, preds, matching(images, ann, cats, preds))
    # p1 sits exactly on the cat (TP); p2 is a "cat" exactly on the dog (FP, class confusion);
    # p3 is on image 2, which has no objects (FP); the dog is missed.
    assert out["model/match"].value.tolist() == [1.0, 0.0, 0.0]
    assert out["model/iou"].value.tolist() == [1.0, 0.0, 0.0]
    assert out["model/class_confusion"].value.tolist() == [0.0, 1.0, 0.0]
    assert out["model/missed"].value.tolist() == [1.0, 0.0]
    # binary distributions [s, 1-s]: image 1 has 0.9 and 0.6, image 2 has 0.2
    h = lambda p: -(p * np.log2(p) + (1 - p) * np.log2(1 - p))  # noqa: E731
    assert out["model/entropy"].value.tolist() == pytest.approx([(h(0.9) + h(0.6)) / 2, h(0.2)])
    assert out["model/least_confidence"].value.tolist() == pytest.approx([(0.1 + 0.4) / 2, 0.2])
    assert out["model/margin"].value.tolist() == pytest.approx([(0.8 + 0.2) / 2, 0.6])
    assert out["model/mean_confidence"].value.tolist() == pytest.approx([0.75, 0.2])
    assert out["model/variance"].value.tolist() == pytest.approx(
        [(np.var([0.9, 0.1]) + np.var([0.6, 0.4])) / 2, np.var([0.2, 0.8])]
    )


def test_scores_vector_drives_the_acquisition_functions():
    images, ann, cats, preds = _tiny_tables(
        [json.dumps([0.5, 0.3, 0.2]), json.dumps([0.25, 0.25, 0.5]), json.dumps([1.0, 0.0, 0.0])]
    )
    matches = matching(images, ann, cats, preds)
    out = model_metrics(metrics("prediction", ()), images, ann, preds, matches)
    e1 = -(0.5 * np.log2(0.5) + 0.3 * np.log2(0.3) + 0.2 * np.log2(0.2))
    e2 = 1.5
    assert out["model/entropy"].value.tolist() == pytest.approx([(e1 + e2) / 2, 0.0])
    assert out["model/margin"].value.tolist() == pytest.approx([(0.2 + 0.25) / 2, 1.0])


def test_probability_vectors_of_mixed_lengths_equal_numpy_per_prediction():
    """Vectors of 1, 2 and 3 classes, one unnormalised, one all zero, rows without ``scores``
    (binary [s, 1 - s]): every acquisition value equals numpy on that prediction's vector."""
    vectors = ["[0.7]", "[2.0, 1.0, 1.0]", None, "[0.0, 0.0]", "", "[0.1, 0.6, 0.3]"]
    frame = pd.DataFrame({"score": [0.7, 0.5, 0.8, 0.1, 0.35, 0.6], "scores": vectors})
    p, lengths = probabilities(frame)
    for i, (score, raw) in enumerate(zip(frame.score, vectors, strict=True)):
        v = np.asarray(json.loads(raw), float) if raw else np.array([score, 1 - score])
        v = v / v.sum() if v.sum() > 0 else v
        assert lengths[i] == len(v)
        assert p[i, : len(v)].tolist() == v.tolist() and not p[i, len(v) :].any()
        q = v[v > 0]
        assert distribution_entropy(p)[i] == pytest.approx(-(q * np.log2(q)).sum(), abs=1e-15)
        top = np.sort(v)[::-1]
        assert top_margin(p)[i] == pytest.approx(top[0] - (top[1] if len(v) > 1 else 0.0))
        assert _variance(p, lengths)[i] == pytest.approx(np.var(v), abs=1e-15)


CUSTOM = """
from qm_dagster import metric

@metric(level="prediction", description="Box area of true positives, else 0")
def tp_box_area(prediction, match):
    return prediction["bbox_w"] * prediction["bbox_h"] if match["status"] == "tp" else 0.0

@metric(level="object", description="Share of dark pixels in the object's mask")
def dark_share(crop, mask, annotation):
    return float((crop[mask].mean(axis=1) < 60).mean()) if mask.any() else float("nan")
"""


def test_new_predictions_rerun_only_model_assets(settings, tmp_path, monkeypatch):
    (tmp_path / "custom_levels_mod.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = dataclasses.replace(settings, metric_modules=("custom_levels_mod",))
    write_demo(settings.datasets)
    assert materialize_version(settings, "validation").success
    first = load("model/tp_box_area", "validation", settings)
    assert len(load("label/dark_share", "validation", settings)) == len(
        load("dataset/annotations", "validation", settings)
    )

    # a second model's predictions land: copy the demo detector with every score halved
    pred_dir = DatasetRoot(settings.datasets).version("validation").predictions_url
    with open(f"{pred_dir}/demo_detector.json") as fh:
        dets = json.load(fh)
    with open(f"{pred_dir}/half.json", "w") as fh:
        json.dump([{**d, "score": d["score"] / 2} for d in dets], fh)

    decodes = []
    real = qm_dagster.passes.decode.decode
    monkeypatch.setattr(
        qm_dagster.passes.decode, "decode", lambda data: decodes.append(1) or real(data)
    )
    from definitions import build_definitions

    keys = build_definitions(settings).resolve_asset_graph().get_all_asset_keys()
    selection = [k for k in keys if k.path[0] == "model"] + [
        dg.AssetKey(["dataset", "predictions"])
    ]
    result = materialize_version(settings, "validation", selection)
    assert result.success
    ran = {e.asset_key.path[0] for e in result.get_asset_materialization_events()}
    assert ran == {"model", "dataset"}
    assert decodes == []
    confidence = load("model/confidence", "validation", settings)
    assert set(confidence.model) == {"demo_detector", "half"}
    half = confidence[confidence.model == "half"].value.to_numpy()
    full = confidence[confidence.model == "demo_detector"].value.to_numpy()
    assert half == pytest.approx(full / 2)
    again = load("model/tp_box_area", "validation", settings)
    assert again[again.model == "demo_detector"].value.tolist() == first.value.tolist()


def test_iou_equals_pycocotools_compute_iou_with_crowd_regions(tmp_path):
    """model/iou (vectorised over same-image pairs) against pycocotools' own ``computeIoU``
    per image and class, on the cocoapi fake results, whose ground truth has crowd regions."""
    from qm_dagster.importers import import_version
    from tests.conftest import coco_fake_spec

    spec = coco_fake_spec()
    import_version(spec, str(tmp_path), "v")
    frame = ours(str(tmp_path), "v")
    got = dict(zip(frame.prediction_id, frame.value_iou, strict=True))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(spec.labels)
        dt = gt.loadRes(spec.predictions)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
    assert any(a["iscrowd"] for a in gt.anns.values())
    checked = 0
    for (image_id, cat), ious in ev.ious.items():
        dts = sorted(ev._dts[image_id, cat], key=lambda d: -d["score"])
        if len(ious) == 0:
            continue
        for d, row in zip(dts, np.asarray(ious), strict=False):
            assert got[d["id"]] == pytest.approx(row.max(), abs=1e-12)
            checked += 1
    assert checked > 500


def test_label_metrics_of_predicted_objects(tmp_path):
    """model/object_area, relative_area, object_aspect_ratio, border_proximity by hand from
    the boxes of the real fake detections; model/overlap and annotation_duplicate equal to
    pycocotools' box IoUs among each image's confident predictions (score >= 0.5, the 20
    highest), NaN for the others."""
    from pycocotools import mask as mask_utils

    from qm_dagster.metrics.model import PAIRED_MAX, PAIRED_MIN_SCORE

    import_version(coco_fake_spec(), str(tmp_path), "v")
    version = DatasetRoot(str(tmp_path)).version("v")
    coco = version.instances()
    manifest = build_manifest(version, 10**8, table=coco.images).images
    preds = version.predictions("fake", coco)
    names = ["object_area", "relative_area", "object_aspect_ratio", "border_proximity"]
    names += ["overlap", "annotation_duplicate"]
    specs = [s for s in metrics("prediction", ()) if s.name in names]
    matches = matching(manifest, coco.annotations, coco.categories, preds)
    tables = model_metrics(specs, manifest, coco.annotations, preds, matches)
    got = {n: tables[f"model/{n}"].set_index("prediction_id").value for n in names}
    x, y, w, h = (preds[c].to_numpy() for c in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
    size = coco.images.set_index("image_id").reindex(preds.image_id)
    width, height = size.coco_width.to_numpy(float), size.coco_height.to_numpy(float)
    ids = preds.prediction_id.to_numpy()
    np.testing.assert_allclose(got["object_area"][ids], w * h)
    np.testing.assert_allclose(got["relative_area"][ids], w * h / (width * height))
    np.testing.assert_allclose(got["object_aspect_ratio"][ids], w / h)
    border = np.max([(x + w) / width, (y + h) / height, 1 - x / width, 1 - y / height], axis=0)
    np.testing.assert_allclose(got["border_proximity"][ids], border)

    checked = 0
    for _, group in preds.groupby("image_id"):
        ranked = group.sort_values("score", ascending=False, kind="stable")
        confident = ranked[ranked.score >= PAIRED_MIN_SCORE].head(PAIRED_MAX)
        rest = group.prediction_id[~group.prediction_id.isin(confident.prediction_id)]
        assert got["overlap"][rest].isna().all()
        # lists: pycocotools reads a column-major array (what to_numpy gives here) as row-major
        boxes = confident[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy().tolist()
        if len(boxes) < 2:
            continue
        iou = np.asarray(mask_utils.iou(boxes, boxes, [0] * len(boxes)))
        np.fill_diagonal(iou, 0)
        same = confident.category_id.to_numpy()[:, None] == confident.category_id.to_numpy()
        pid = confident.prediction_id.to_numpy()
        np.testing.assert_allclose(got["overlap"][pid], iou.max(axis=1))
        np.testing.assert_allclose(
            got["annotation_duplicate"][pid], np.where(same, iou, 0).max(axis=1)
        )
        checked += 1
    assert checked > 10 and (got["annotation_duplicate"] > 0.5).any()


def test_mask_iou_equals_pycocotools_on_the_mask_results(tmp_path):
    """model/mask_iou of cocoapi's mask results: per prediction, the best pycocotools mask IoU
    (COCO's annToRLE masks, crowd rule) with a same-class object of its image; the same
    predictions without their masks have none (NaN)."""
    from pycocotools import mask as mask_utils

    src = shared("coco-val2014-fake100")
    import_version(coco_fake_spec(results="fakesegm", model="masks"), str(tmp_path), "v")
    version = DatasetRoot(str(tmp_path)).version("v")
    coco = version.instances()
    manifest = build_manifest(version, 10**8, table=coco.images).images
    preds = version.predictions("masks", coco)
    specs = [s for s in metrics("prediction", ()) if s.name == "mask_iou"]
    matches = matching(manifest, coco.annotations, coco.categories, preds)
    got = model_metrics(specs, manifest, coco.annotations, preds, matches)["model/mask_iou"]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(src / "instances_val2014_100.json"))
    results = json.loads(
        (src / "results" / "instances_val2014_fakesegm100_results.json").read_text()
    )
    expected = []
    for r in results:
        anns = gt.loadAnns(gt.getAnnIds(imgIds=r["image_id"], catIds=r["category_id"]))
        if not anns:
            expected.append(0.0)
            continue
        ious = mask_utils.iou(
            [r["segmentation"]], [gt.annToRLE(a) for a in anns], [a["iscrowd"] for a in anns]
        )
        expected.append(float(np.max(ious)))
    np.testing.assert_allclose(got.value.to_numpy(), expected, rtol=0, atol=1e-12)
    assert 0.2 < np.mean(expected) < 0.9
    boxes = preds.assign(segmentation=None)
    unmasked = model_metrics(specs, manifest, coco.annotations, boxes, matches)["model/mask_iou"]
    assert unmasked.value.isna().all()
