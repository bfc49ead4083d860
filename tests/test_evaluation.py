"""Sliced evaluation equals pycocotools: the published cocoapi figures, an image slice against a
fresh evaluation of that subset, COCO's own size buckets; VOC AP equals the published toy values."""

from __future__ import annotations

import contextlib
import io
import itertools
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from qm_dagster.boxeval import Boxes
from qm_dagster.errors import QmError
from qm_dagster.evaluation import (
    STATS,
    VocBox,
    evaluate,
    image_slice,
    size_bucket,
    voc_ap,
    whole,
)
from qm_dagster.importers.readers import read_txt_dir, read_voc_dir
from tests.cocoref import counts_at_50, fresh_pycocotools, sliced
from tests.conftest import cartucho_spec, coco_fake_spec, shared


@pytest.fixture(scope="module")
def coco():
    """pycocotools' objects (the reference) of the files, and the published numbers."""
    src = shared("coco-val2014-fake100")
    gt_file = str(src / "instances_val2014_100.json")
    dt_file = str(src / "results" / "instances_val2014_fakebbox100_results.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_file)
        dt = gt.loadRes(dt_file)
    reference = json.loads((src / "REFERENCE.json").read_text())["published"]
    return gt, dt, reference["bbox_full_faster_coco_eval"]


def evaluated(gt, dt, size_edges=None):
    """Our evaluation (boxeval) of the records behind pycocotools' objects."""
    return evaluate(
        Boxes.from_coco(gt.dataset["annotations"], detections=False),
        Boxes.from_coco(dt.dataset["annotations"], detections=True),
        gt.getImgIds(),
        gt.getCatIds(),
        size_edges,
    )


def test_whole_dataset_equals_published_cocoapi_and_pycocotools(coco):
    gt, dt, published = coco
    summary = whole(evaluated(gt, dt))
    assert [summary[k] for k in STATS] == pytest.approx(published, abs=1e-12)
    assert [summary[k] for k in STATS] == pytest.approx(fresh_pycocotools(gt, dt).stats, abs=1e-12)


def _cartucho(tmp_path):
    """The cartucho-voc85 real detector output as COCO files, by our importer."""
    from qm_dagster.importers import import_version

    import_version(cartucho_spec(), str(tmp_path), "c")
    return tmp_path / "c" / "annotations.json", tmp_path / "c" / "predictions" / "detector.json"


def test_all_twelve_stats_and_slices_equal_pycocotools_on_real_detections(tmp_path):
    """Ours (boxeval) against pycocotools (the reference) on a real detector's output:
    the 12 statistics of the whole version and of 20 random image subsets."""
    gt_file, dt_file = _cartucho(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes(json.loads(dt_file.read_text()))
    ev = evaluated(gt, dt)
    assert [whole(ev)[k] for k in STATS] == pytest.approx(
        fresh_pycocotools(gt, dt).stats, abs=1e-12
    )
    rng = np.random.default_rng(7)
    ids = sorted(gt.getImgIds())
    for _ in range(20):
        subset = sorted(rng.choice(ids, size=int(rng.integers(1, len(ids))), replace=False))
        ours = image_slice(ev, [int(i) for i in subset])
        fresh = fresh_pycocotools(gt, dt, [int(i) for i in subset]).stats
        assert [ours[k] for k in STATS] == pytest.approx(fresh, abs=1e-12)


def test_image_slice_equals_fresh_pycocotools_on_the_subset(coco):
    gt, dt, _ = coco
    ev = evaluated(gt, dt)
    subset = sorted(gt.getImgIds())[::3]
    ours = image_slice(ev, subset)
    fresh = fresh_pycocotools(gt, dt, subset)
    assert [ours[k] for k in STATS] == pytest.approx(fresh.stats, abs=1e-12)
    # and it really is a different number from the whole version
    assert abs(ours["AP"] - whole(evaluated(gt, dt))["AP"]) > 1e-3


def test_size_buckets_reproduce_coco_small_medium_large(coco):
    gt, dt, published = coco
    edges = [0, 500, 5000, 1e10]
    ev = evaluated(gt, dt, size_edges=edges)
    whole(ev)
    assert [size_bucket(ev, a)["AP"] for a in (1, 2, 3)] == pytest.approx(published[3:6], 1e-12)
    ranges = [[lo, hi] for lo, hi in itertools.pairwise(edges)]
    precision = fresh_pycocotools(gt, dt, area_rng=ranges).eval["precision"]
    expected = [precision[:, :, :, a, -1][precision[:, :, :, a, -1] > -1].mean() for a in range(3)]
    buckets = [size_bucket(ev, a) for a in (4, 5, 6)]
    assert [b["AP"] for b in buckets] == pytest.approx(expected, abs=1e-12)
    assert buckets[0]["AP"] != pytest.approx(published[3], abs=1e-3)


def _toy():
    src = shared("rafael-toy-voc10")
    gts = [
        VocBox(img, b.category, (b.x, b.y, b.w, b.h), difficult=b.difficult)
        for img, boxes in read_voc_dir(str(src / "gts_vocpascal_format")).items()
        for b in boxes
    ]
    dets = [
        VocBox(img, b.category, (b.x, b.y, b.w, b.h), score=b.score)
        for img, boxes in read_txt_dir(str(src / "dets_classname_abs_xyx2y2"), "xyxy", True).items()
        for b in boxes
    ]
    return gts, dets


@pytest.mark.parametrize(
    ("iou", "interpolation", "published"),
    [(0.5, "11", 88.64), (0.5, "all", 89.58), (0.75, "11", 49.24), (0.75, "all", 50.97)],
)
def test_voc_ap_equals_published_toy_example(iou, interpolation, published):
    gts, dets = _toy()
    ap = voc_ap(gts, dets, iou=iou, interpolation=interpolation)
    assert round(100 * ap["cat"], 2) == published


def test_voc_all_point_by_hand():
    gts = [VocBox(1, "a", (0, 0, 10, 10)), VocBox(2, "a", (0, 0, 10, 10))]
    dets = [
        VocBox(1, "a", (0, 0, 10, 10), 0.9),
        VocBox(1, "a", (50, 50, 5, 5), 0.8),
        VocBox(2, "a", (0, 0, 10, 10), 0.7),
    ]
    # precision/recall: (1, .5), (.5, .5), (.667, 1) -> all-point AP = .5*1 + .5*.667
    assert voc_ap(gts, dets)["a"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert np.isfinite(voc_ap(gts, dets, interpolation="11")["a"])


def _imported(tmp_path, results: str = "fakebbox"):
    """coco-val2014-fake100 imported as a version with ``results`` as model ``fake``: its
    manifest, tables and predictions."""
    from qm_dagster.dataset import DatasetRoot
    from qm_dagster.importers import import_version
    from qm_dagster.manifest import build_manifest

    import_version(coco_fake_spec(results=results), str(tmp_path), "v")
    version = DatasetRoot(str(tmp_path)).version("v")
    tables = version.instances()
    manifest = build_manifest(version, 10**8, table=tables.images).images
    preds = version.predictions("fake", tables)
    return manifest, tables, preds


def test_sliced_evaluation_table_on_an_imported_version(tmp_path, coco):
    import pandas as pd

    gt, dt, published = coco[:3]
    manifest, tables, preds = _imported(tmp_path)
    ids = sorted(gt.getImgIds())
    image_table = pd.DataFrame({"image_id": ids, "data/x": np.arange(len(ids), dtype=float)})
    frame = sliced(manifest, tables.annotations, tables.categories, preds, image_table)
    overall = frame[frame.metric == "all"].iloc[0]
    assert [overall[k] for k in STATS] == pytest.approx(published, abs=1e-12)
    bucket = frame[(frame.metric == "data/x") & (frame.bucket == 1)].iloc[0]
    subset = [
        i for i, x in zip(ids, image_table["data/x"], strict=True) if bucket.lo <= x < bucket.hi
    ]
    fresh = fresh_pycocotools(gt, dt, subset)
    assert bucket.n_images == len(subset) == 20
    assert [bucket[k] for k in STATS] == pytest.approx(fresh.stats, abs=1e-12)
    sizes = frame[frame.metric == "label/object_area"].AP.tolist()
    assert sizes == pytest.approx(published[3:6], abs=1e-12)


def test_image_slices_split_over_workers_equal_the_slices_made_here(tmp_path, coco, monkeypatch):
    """With two workers and the fork server up, the image slices are evaluated on a pool (the
    evaluation sent to each worker once): every row equals the one made here, and a bucket
    still equals a fresh pycocotools evaluation of its images."""
    import pandas as pd

    from qm_dagster.passes import pool

    gt, dt = coco[:2]
    manifest, tables, preds = _imported(tmp_path)
    ids = sorted(gt.getImgIds())
    rng = np.random.default_rng(11)
    image_table = pd.DataFrame(
        {"image_id": ids, **{f"data/m{i}": rng.normal(size=len(ids)) for i in range(3)}}
    )
    inputs = (manifest, tables.annotations, tables.categories, preds, image_table)
    here = sliced(*inputs)
    used = []
    real_pool = pool.process_pool
    monkeypatch.setattr(pool, "process_pool", lambda n, *a: used.append(n) or real_pool(n, *a))
    pool.start_fork_server()
    split = sliced(*inputs, workers=2)
    assert used == [2]
    pd.testing.assert_frame_equal(split, here)
    bucket = split[(split.metric == "data/m1") & (split.bucket == 3)].iloc[0]
    x = image_table["data/m1"]
    subset = [i for i, v in zip(ids, x, strict=True) if bucket.lo <= v < bucket.hi]
    assert bucket.n_images == len(subset) > 0
    fresh = fresh_pycocotools(gt, dt, subset)
    assert [bucket[k] for k in STATS] == pytest.approx(fresh.stats, abs=1e-12)


def test_explicit_edges_and_score_threshold(tmp_path, coco):
    """Configured bucket edges replace the quantiles; TP/FP follow the configured score
    threshold, counted independently from pycocotools' own evalImgs."""
    import pandas as pd

    gt, dt = coco[:2]
    manifest, tables, preds = _imported(tmp_path)
    ids = sorted(gt.getImgIds())
    image_table = pd.DataFrame({"image_id": ids, "data/x": np.arange(len(ids), dtype=float)})
    edges = {"data/x": [0.0, 10.0, 30.0, 99.0], "label/object_area": [0.0, 1000.0, 1e10]}
    frame = sliced(
        *(manifest, tables.annotations, tables.categories, preds, image_table),
        score=0.3,
        edges=edges,
    )
    rows = frame[frame.metric == "data/x"]
    assert rows.lo.tolist() == [0.0, 10.0, 30.0] and rows.hi.tolist() == [10.0, 30.0, 99.0]
    assert rows.n_images.tolist() == [10, 20, len(ids) - 30]
    assert frame[frame.metric == "label/object_area"].hi.tolist() == [1000.0, 1e10]
    fresh = COCOeval(gt, dt, "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        fresh.evaluate()
    t50 = 0
    tp = fp = 0
    for e in fresh.evalImgs:
        if e is None or e["aRng"] != fresh.params.areaRng[0] or e["maxDet"] != 100:
            continue
        for matched, ignored, score in zip(
            e["dtMatches"][t50], e["dtIgnore"][t50], e["dtScores"], strict=True
        ):
            if score >= 0.3 and not ignored:
                tp += matched > 0
                fp += matched == 0
    overall = frame[frame.metric == "all"].iloc[0]
    assert (overall.tp, overall.fp) == (tp, fp) and tp > 400 and fp > 50, (tp, fp)


def test_bucket_edges_setting_is_validated():
    from qm_dagster.config import _coerce

    assert _coerce({"bucket_edges": {"data/x": [0, 1, 2]}}, "qm.yaml")["bucket_edges"] == (
        ("data/x", (0.0, 1.0, 2.0)),
    )
    with pytest.raises(QmError, match="strictly increasing"):
        _coerce({"bucket_edges": {"data/x": [0, 2, 1]}}, "qm.yaml")
    with pytest.raises(QmError, match="score_threshold"):
        _coerce({"score_threshold": 1.5}, "qm.yaml")


@pytest.fixture(scope="module")
def coco_segm():
    """pycocotools' objects for the mask results, and the published segm figures."""
    src = shared("coco-val2014-fake100")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(src / "instances_val2014_100.json"))
        dt = gt.loadRes(str(src / "results" / "instances_val2014_fakesegm100_results.json"))
    reference = json.loads((src / "REFERENCE.json").read_text())["published"]
    return gt, dt, reference


def segm_evaluated(gt, dt):
    """Our segm evaluation, its masks made by our own geometry from the JSON records."""
    from qm_dagster.geometry import parsed_rle

    def masks(anns):
        sizes = [gt.imgs[a["image_id"]] for a in anns]
        return [
            parsed_rle(json.loads(json.dumps(a["segmentation"])), s["height"], s["width"])
            for a, s in zip(anns, sizes, strict=True)
        ]

    gt_anns, dt_anns = gt.dataset["annotations"], dt.dataset["annotations"]
    dt_records = [{k: v for k, v in a.items() if k != "area"} | {"area": 0.0} for a in dt_anns]
    return evaluate(
        Boxes.from_coco(gt_anns, detections=False).with_masks(masks(gt_anns)),
        Boxes.from_coco(dt_records, detections=True).with_masks(masks(dt_anns)),
        gt.getImgIds(),
        gt.getCatIds(),
        iou_type="segm",
    )


def test_segm_equals_published_cocoapi_and_pycocotools(coco_segm):
    """All 12 mask statistics, the whole version and image subsets, against pycocotools'
    ``iouType="segm"`` and cocoapi's published figures. The detections' areas are left out
    of our input: they must come from the masks, as ``loadRes`` makes them."""
    gt, dt, published = coco_segm
    ev = segm_evaluated(gt, dt)
    ours = [whole(ev)[k] for k in STATS]
    assert ours == pytest.approx(published["segm_full_faster_coco_eval"], abs=1e-12)
    assert [round(v, 3) for v in ours] == pytest.approx(published["segm_3dp"], abs=1e-9)
    assert ours == pytest.approx(fresh_pycocotools(gt, dt, iou_type="segm").stats, abs=1e-12)
    bbox = whole(evaluated(*coco_segm[:2]))["AP"]  # the same records as boxes differ
    assert abs(bbox - ours[0]) > 0.01
    rng = np.random.default_rng(3)
    ids = sorted(gt.getImgIds())
    for _ in range(5):
        subset = [int(i) for i in sorted(rng.choice(ids, size=40, replace=False))]
        fresh = fresh_pycocotools(gt, dt, subset, iou_type="segm").stats
        row = image_slice(ev, subset)
        assert [row[k] for k in STATS] == pytest.approx(fresh, abs=1e-12)


def test_mask_results_import_and_sliced_segm_rows(tmp_path, coco_segm):
    """cocoapi's mask results (RLEs, no boxes) imported as a model: its boxes are the masks'
    (pycocotools' toBbox), and sliced evaluation adds segm rows equal to pycocotools'
    ``iouType="segm"`` on the whole version and on a bucket, next to the bbox rows."""
    import pandas as pd
    from pycocotools import mask as mask_utils

    gt, dt, published = coco_segm
    manifest, tables, preds = _imported(tmp_path, "fakesegm")
    boxes = preds[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy()
    expected = [mask_utils.toBbox(a["segmentation"]) for a in dt.dataset["annotations"]]
    np.testing.assert_allclose(boxes, np.array(expected), rtol=0, atol=0)

    ids = sorted(gt.getImgIds())
    image_table = pd.DataFrame({"image_id": ids, "data/x": np.arange(len(ids), dtype=float)})
    frame = sliced(manifest, tables.annotations, tables.categories, preds, image_table)
    segm = frame[frame.iou_type == "segm"]
    assert set(frame.iou_type) == {"bbox", "segm"} and len(segm) == len(frame) / 2
    overall = segm[segm.metric == "all"].iloc[0]
    assert [overall[k] for k in STATS] == pytest.approx(
        published["segm_full_faster_coco_eval"], abs=1e-12
    )
    bucket = segm[(segm.metric == "data/x") & (segm.bucket == 2)].iloc[0]
    subset = [
        i for i, x in zip(ids, image_table["data/x"], strict=True) if bucket.lo <= x < bucket.hi
    ]
    fresh = fresh_pycocotools(gt, dt, subset, iou_type="segm").stats
    assert [bucket[k] for k in STATS] == pytest.approx(fresh, abs=1e-12)
    assert (bucket.tp, bucket.fp, bucket.fn) == counts_at_50(
        fresh_pycocotools(gt, dt, subset, iou_type="segm")
    )
    whole = fresh_pycocotools(gt, dt, iou_type="segm")
    assert (overall.tp, overall.fp, overall.fn) == counts_at_50(whole)
    box = frame[(frame.iou_type == "bbox") & (frame.metric == "all")].iloc[0]
    assert (box.tp, box.fp) != (overall.tp, overall.fp)  # mask matches, not the boxes'


def test_named_object_and_prediction_slices_equal_fresh_pycocotools(tmp_path, coco):
    """An object slice (people) ignores the other objects, which pycocotools
    does for objects outside its area range: the reference run sets their area to -1 (a
    user's ``ignore`` flag is overwritten by pycocotools' _prepare). A prediction slice
    (confident detections) is a fresh evaluation of those detections alone."""

    import pandas as pd

    from qm_dagster.sliced import NamedSlices

    gt, dt = coco[:2]
    manifest, tables, preds = _imported(tmp_path)
    ann = tables.annotations
    people = ann.annotation_id[ann.category == "person"].to_numpy()
    confident = preds[preds.score >= 0.5][["prediction_id"]].assign(model="fake")
    ids = sorted(gt.getImgIds())
    frame = sliced(
        manifest,
        ann,
        tables.categories,
        preds,
        pd.DataFrame({"image_id": ids}),
        named=NamedSlices(objects={"people": people}, predictions={"sure": confident}),
    )
    row = frame[frame.metric == "slice:people"].iloc[0]
    fresh = _others_ignored(gt, dt, people)
    assert row.level == "object" and row.n_members == len(people)
    assert [row[k] for k in STATS] == pytest.approx(fresh.stats, abs=1e-12)
    assert abs(row.AP - frame[frame.metric == "all"].iloc[0].AP) > 0.01
    assert (row.tp, row.fp, row.fn) == counts_at_50(fresh)

    sure = frame[frame.metric == "slice:sure"].iloc[0]
    fresh, kept = _alone(gt, dt, preds.score >= 0.5)
    assert sure.level == "prediction" and sure.n_members == kept
    assert [sure[k] for k in STATS] == pytest.approx(fresh.stats, abs=1e-12)


def _others_ignored(gt, dt, members):
    """pycocotools' evaluation with the objects outside ``members`` ignored: their area set
    to -1, outside every area range (a user's ``ignore`` flag is overwritten by _prepare)."""
    import copy

    from pycocotools.coco import COCO

    doc = copy.deepcopy(gt.dataset)
    for a in doc["annotations"]:
        if a["id"] not in set(members.tolist()):
            a["area"] = -1.0
    sliced_gt = COCO()
    sliced_gt.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        sliced_gt.createIndex()
        sliced_dt = sliced_gt.loadRes(dt.dataset["annotations"])
    return fresh_pycocotools(sliced_gt, sliced_dt)


def _alone(gt, dt, keep):
    """pycocotools' evaluation of the detections where ``keep``, and how many they are."""
    kept = [a for a, k in zip(dt.dataset["annotations"], keep, strict=True) if k]
    with contextlib.redirect_stdout(io.StringIO()):
        alone = gt.loadRes(
            [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in kept]
        )
    return fresh_pycocotools(gt, alone), len(kept)


def test_object_and_prediction_metric_buckets_with_edges_equal_fresh_pycocotools(tmp_path, coco):
    """Edges for an object metric (here each box's width) and a prediction metric (here the
    score) add a row per bucket: objects outside the bucket ignored, as an object slice; the
    predictions inside alone, as a prediction slice."""
    import pandas as pd

    from qm_dagster.sliced import NamedSlices

    gt, dt = coco[:2]
    manifest, tables, preds = _imported(tmp_path)
    ann = tables.annotations
    edges = {"label/x": [0.0, 30.0, 1e9], "model/x": [0.0, 0.5, 1.0]}
    named = NamedSlices.of(
        [],
        {
            "object": ann[["annotation_id"]].assign(**{"label/x": ann.bbox_w}),
            "prediction": preds[["model", "prediction_id"]].assign(**{"model/x": preds.score}),
        },
        edges,
    )
    ids = sorted(gt.getImgIds())
    frame = sliced(
        manifest,
        ann,
        tables.categories,
        preds,
        pd.DataFrame({"image_id": ids}),
        named=named,
        edges=edges,
    )
    narrow = frame[(frame.metric == "label/x") & (frame.bucket == 0)].iloc[0]
    members = ann.annotation_id[ann.bbox_w < 30].to_numpy()
    assert (narrow.level, narrow.lo, narrow.hi, narrow.n_members) == ("object", 0, 30, len(members))
    fresh = _others_ignored(gt, dt, members)
    assert [narrow[k] for k in STATS] == pytest.approx(fresh.stats, abs=1e-12)
    confident = frame[(frame.metric == "model/x") & (frame.bucket == 1)].iloc[0]
    fresh, kept = _alone(gt, dt, preds.score >= 0.5)  # the last bucket includes its upper edge
    assert confident.level == "prediction" and confident.n_members == kept
    assert [confident[k] for k in STATS] == pytest.approx(fresh.stats, abs=1e-12)
