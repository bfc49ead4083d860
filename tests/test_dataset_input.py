"""Validation at the boundary: COCO errors name file, record and problem; version names; listing."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from qm_dagster import coco
from qm_dagster.coco import parse_instances, parse_results
from qm_dagster.dataset import DatasetRoot, check_version_name
from qm_dagster.errors import DatasetError, VersionNameError
from tests.conftest import SHARED_DATA
from tests.images import commit

COCO_DIR = SHARED_DATA / "coco-val2014-fake100"

GOOD = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "width": 10, "height": 8},
        {"id": 2, "file_name": "sub/b.png"},
    ],
    "annotations": [
        {
            "id": 7,
            "image_id": 1,
            "category_id": 3,
            "bbox": [1, 2, 3, 4],
            "area": 12,
            "iscrowd": 0,
            "segmentation": [[1, 2, 4, 2, 4, 6]],
            "track_id": 5,
            "keypoints": [1, 1, 2, 0, 0, 0],
        },
        {
            "id": 8,
            "image_id": 2,
            "category_id": 3,
            "bbox": [0, 0, 2, 2],
            "iscrowd": 1,
            "segmentation": {"size": [8, 10], "counts": [10, 70]},
        },
    ],
    "categories": [{"id": 3, "name": "cat"}],
}


def test_good_instances_become_tables():
    t = parse_instances(GOOD, "annotations.json")
    assert list(t.images.file_name) == ["a.jpg", "sub/b.png"]
    assert t.annotations.loc[0, "category"] == "cat"
    assert t.annotations.loc[0, "track_id"] == "5"
    assert list(t.annotations.iscrowd) == [0, 1]


def _broken(path: list, value) -> dict:
    doc = copy.deepcopy(GOOD)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "where", "words"),
    [
        (["annotations", 0, "bbox"], [1, 2, 3], "annotations[0].bbox", "bbox must be"),
        (["annotations", 0, "bbox"], [1, 2, -3, 4], "annotations[0].bbox", ">= 0"),
        (["annotations", 1, "image_id"], 99, "annotations[1].image_id", "not in images"),
        (["annotations", 1, "category_id"], 4, "annotations[1].category_id", "not in categories"),
        (["annotations", 1, "id"], 7, "annotations[1].id", "duplicate annotation id"),
        (
            ["annotations", 0, "segmentation"],
            [[1, 2, 3]],
            "annotations[0].segmentation[0]",
            "even number",
        ),
        (
            ["annotations", 1, "segmentation"],
            {"size": [8, 10], "counts": [1, 2]},
            "annotations[1].segmentation.counts",
            "sum to 3",
        ),
        (["annotations", 0, "keypoints"], [1, 1, 5], "annotations[0].keypoints[2]", "visibility"),
        (["annotations", 0, "iscrowd"], 2, "annotations[0].iscrowd", "0 or 1"),
        (["images", 0, "file_name"], "../etc/passwd", "images[0].file_name", "escapes"),
        (["images", 0, "file_name"], "/abs/a.jpg", "images[0].file_name", "relative path"),
        (["images", 0, "file_name"], "https://x.org/a.jpg", "images[0].file_name", "relative path"),
        (["images", 0, "file_name"], "a/../../b.jpg", "images[0].file_name", "escapes"),
        (["images", 1, "id"], 1, "images[1].id", "duplicate image id"),
        (["images", 0, "width"], 0, "images[0].width", ">= 1"),
        (["images", 0, "id"], KeyError, "images[0]", "missing required field 'id'"),
    ],
)
def test_malformed_instances_name_file_record_and_problem(path, value, where, words):
    with pytest.raises(DatasetError) as err:
        parse_instances(_broken(path, value), "v1/annotations.json")
    assert err.value.file == "v1/annotations.json"
    assert err.value.where == where
    assert words in err.value.problem
    assert str(err.value).startswith(f"v1/annotations.json at {where}: ")


def test_results_validation_and_pycocotools_ids():
    t = parse_instances(GOOD, "a.json")
    dets = [
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5},
        {"image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.9, "scores": [0.1, 0.9]},
    ]
    table = parse_results(dets, "p.json", t.images.image_id, t.categories)
    assert list(table.prediction_id) == [1, 2]  # pycocotools loadRes numbers results from 1
    with pytest.raises(DatasetError, match=r"p.json at \[1\].image_id: image id 5"):
        parse_results(
            [dets[0], {**dets[1], "image_id": 5}], "p.json", t.images.image_id, t.categories
        )
    with pytest.raises(DatasetError, match=r"\[0\].score"):
        parse_results([{**dets[0], "score": "high"}], "p.json", t.images.image_id, t.categories)


@pytest.mark.parametrize("name", ["v1", "2026-11-01", "prod_batch.7", "A" * 128])
def test_valid_version_names(name):
    assert check_version_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "v 1", "..", ".", "a...b", "é", "A" * 129, "v1,v2"])
def test_invalid_version_names(name):
    with pytest.raises(VersionNameError, match="invalid"):
        check_version_name(name)


def test_listing_separates_complete_incomplete_invalid(tmp_path):
    for name in ("v1", "v2", "bad name"):
        (tmp_path / name / "images").mkdir(parents=True)
    commit(tmp_path / "v1", kind="train")
    commit(tmp_path / "bad name")
    (tmp_path / "stray.txt").write_text("x")
    listing = DatasetRoot(str(tmp_path)).listing()
    assert listing.complete == ["v1"]
    assert listing.incomplete == ["v2"]
    assert listing.invalid == ["bad name"]


def test_unlabeled_version_lists_every_image_file(tmp_path):
    images = tmp_path / "v1" / "images"
    (images / "nested").mkdir(parents=True)
    for rel in ("a.jpg", "nested/b.PNG", "notes.txt", "c.webp"):
        (images / rel).write_bytes(b"x")
    commit(tmp_path / "v1")
    table = DatasetRoot(str(tmp_path)).version("v1").image_table()
    assert sorted(table.image_id) == ["a.jpg", "c.webp", "nested/b.PNG"]


def test_version_json_is_validated(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "version.json").write_text(json.dumps({"kind": "prod"}))
    with pytest.raises(DatasetError, match="kind"):
        DatasetRoot(str(tmp_path)).version("v1").meta()


def _many_records() -> dict:
    """GOOD plus more records, four of them malformed (an image with a bad width, a negative
    box, an annotation on the bad image, a repeated annotation id)."""
    doc = copy.deepcopy(GOOD)
    doc["images"].append({"id": 3, "file_name": "c.jpg", "width": "wide"})
    doc["annotations"] += [
        {"id": 9, "image_id": 2, "category_id": 3, "bbox": [0, 0, -3, 2]},
        {"id": 10, "image_id": 3, "category_id": 3, "bbox": [0, 0, 2, 2]},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]},
    ]
    return doc


def test_quarantine_keeps_every_good_record_and_names_the_bad_ones():
    doc = _many_records()
    tables = parse_instances(doc, "v1/annotations.json", strict=False)
    assert list(tables.images.image_id) == [1, 2]
    assert list(tables.annotations.annotation_id) == [7, 8, 11]
    found = [(q.where, q.record_id, q.image_id) for q in tables.quarantined]
    assert found == [
        ("images[2].width", 3, 3),
        ("annotations[2].bbox", 9, 2),
        ("annotations[3].image_id", 10, 3),
        ("annotations[5].id", 11, 1),  # a repeated id: the first record keeps it
    ]
    assert "expected a number >= 0, got -3" in tables.quarantined[1].reason
    assert all(q.file == "v1/annotations.json" for q in tables.quarantined)
    with pytest.raises(DatasetError, match=r"images\[2\].width"):
        parse_instances(doc, "v1/annotations.json")  # strict: the first bad record fails
    good = parse_instances(copy.deepcopy(GOOD), "v1/annotations.json", strict=False)
    assert good.quarantined == []


def test_quarantined_records_are_data_issues_and_strict_fails_the_version(settings, tmp_path):
    import dataclasses

    import dagster as dg

    from qm_dagster import load
    from tests.conftest import materialize_version
    from tests.images import solid, write_image

    version = tmp_path / "datasets" / "v"
    for image in GOOD["images"]:
        write_image(version / "images" / image["file_name"], solid((90, 90, 90), 8, 10))
    write_image(version / "images" / "c.jpg", solid((90, 90, 90), 8, 10))
    (version / "annotations.json").write_text(json.dumps(_many_records()))
    detections = [
        {"image_id": 3, "category_id": 3, "bbox": [0, 0, 2, 2], "score": 0.9},  # image left out
        {"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.8},
    ]
    (version / "predictions").mkdir()
    (version / "predictions" / "m.json").write_text(json.dumps(detections))
    commit(version)
    names = ("manifest", "data_issues", "annotations", "categories", "predictions")
    keys = [dg.AssetKey(["dataset", name]) for name in names]
    result = materialize_version(settings, "v", keys)
    assert result.success
    predictions = load("dataset/predictions", "v", settings)
    assert list(predictions.prediction_id) == [2]  # ids stay positions, as in pycocotools
    meta = result.asset_materializations_for_node("dataset__predictions")[0].metadata
    assert meta["quarantined predictions"].value == 1
    issues = load("dataset/data_issues", "v", settings)
    quarantined = issues[issues.stage == "annotations"]
    assert list(quarantined.reason) == [
        "images[2].width (id 3): expected an integer, got 'wide'",
        "annotations[2].bbox (id 9): expected a number >= 0, got -3",
        "annotations[3].image_id (id 10): image id 3 is not in images",
        "annotations[5].id (id 11): duplicate annotation id 11",
    ]
    assert set(quarantined.severity) == {"error"}
    assert list(quarantined.image_id) == [3, 2, 3, 1]
    assert list(load("dataset/annotations", "v", settings).annotation_id) == [7, 8, 11]
    meta = result.asset_materializations_for_node("dataset_manifest")[0].metadata
    assert meta["quarantined records"].value == 4
    strict = dataclasses.replace(settings, annotation_errors="strict")
    with pytest.raises(DatasetError, match=r"images\[2\].width: expected an integer"):
        materialize_version(strict, "v", keys)


MIXED = {
    **GOOD,
    "annotations": [
        *GOOD["annotations"],
        {
            "id": 9,
            "image_id": 1,
            "category_id": 3,
            "bbox": [0.5, 1, 2, 3.25],
            "area": 0,
            "annotator": "ann-1",
            "created": 20260101,
            "track_id": "t7",
            "iscrowd": False,
        },
    ],
}


def _record_by_record(monkeypatch) -> None:
    monkeypatch.setattr(coco, "_annotations_at_once", lambda *a: None)
    monkeypatch.setattr(coco, "_results_at_once", lambda *a: None)


def _documents() -> list[tuple[dict, list | None]]:
    """(instances, results) pairs: the hand-written ones, and the real COCO file with its
    box and mask results where ../shared/data is present."""
    docs = [(GOOD, None), (MIXED, None)]
    if COCO_DIR.is_dir():
        real = json.loads((COCO_DIR / "instances_val2014_100.json").read_text())
        for kind in ("bbox", "segm"):
            results = COCO_DIR / "results" / f"instances_val2014_fake{kind}100_results.json"
            docs.append((real, json.loads(results.read_text())))
    return docs


@pytest.mark.parametrize("index", range(4))
def test_column_wise_parsing_equals_record_by_record(index, monkeypatch):
    docs = _documents()
    if index >= len(docs):
        pytest.skip("../shared/data is absent")
    doc, results = docs[index]
    fast = parse_instances(doc, "a.json")
    names = dict(zip(fast.categories.category_id, fast.categories.category, strict=True))
    ids = set(fast.images.image_id)
    assert coco._annotations_at_once(doc["annotations"], ids, names, "a.json") is not None
    if results is not None and "bbox" in results[0]:  # mask results without boxes: by record
        assert coco._results_at_once(results, ids, names, "r.json") is not None
    fast_results = (
        None
        if results is None
        else parse_results(results, "r.json", fast.images.image_id, fast.categories)
    )
    _record_by_record(monkeypatch)
    slow = parse_instances(doc, "a.json")
    pd.testing.assert_frame_equal(fast.annotations, slow.annotations)
    if results is not None:
        slow_results = parse_results(results, "r.json", slow.images.image_id, slow.categories)
        pd.testing.assert_frame_equal(fast_results, slow_results)


def test_json_that_orjson_refuses_is_read_by_the_standard_parser():
    """A NaN token (not JSON, but Python writes it) still parses, so its record is quarantined
    by name rather than the whole file failing; bad text is still a DatasetError naming the
    file."""
    doc = copy.deepcopy(GOOD)
    doc["annotations"][0]["bbox"][0] = float("nan")
    text = json.dumps(doc)  # writes the token NaN
    assert "NaN" in text
    tables = parse_instances(
        coco.load_json(text.encode(), "v1/annotations.json"), "a", strict=False
    )
    assert [q.where for q in tables.quarantined] == ["annotations[0].bbox"]
    assert len(tables.annotations) == len(GOOD["annotations"]) - 1
    assert coco.load_json(b'{"id": 1}', "x.json") == json.loads(b'{"id": 1}')
    with pytest.raises(DatasetError, match=r"x\.json.*not valid JSON"):
        coco.load_json(b'{"id": ', "x.json")
