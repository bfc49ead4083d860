"""``qm explore``: pages, filters, slices and details equal what pandas computes from the stored
tables of the shared demo; the HTTP API's errors; the page itself in Debian's Chromium."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import cv2
import numpy as np
import orjson
import pandas as pd
import pytest
import yaml

from qm_dagster import load
from qm_dagster.explore.query import KEYS, Query, VersionData
from qm_dagster.slices import apply, find, parse_slices

VERSION = "production"


@pytest.fixture(scope="module")
def data(demo) -> VersionData:
    return VersionData(demo.settings, VERSION)


@pytest.fixture(scope="module")
def server(demo) -> Iterator[str]:
    from qm_dagster.explore.server import make_server

    httpd = make_server(demo.settings, VERSION, port=0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _table(demo, level: str) -> pd.DataFrame:
    return load(f"analysis/quality_table/{level}", VERSION, demo.settings)


def _all_pages(data: VersionData, query: Query, size: int = 7) -> pd.DataFrame:
    """Every page of a query, ``size`` rows at a time, as one frame."""
    frames, offset = [], 0
    while True:
        page = data.page(Query(**{**query.__dict__, "offset": offset, "limit": size}))
        frames.append(pd.DataFrame(page["rows"]).astype({"value": float}))
        offset += size
        if offset >= page["total"]:
            return pd.concat(frames, ignore_index=True)


def _expected(table: pd.DataFrame, level: str, sort: str, descending: bool) -> pd.DataFrame:
    """pandas' order: the sort column (missing values last), ties by the row's key."""
    keys = list(KEYS[level])
    ordered = table.sort_values(keys, kind="stable")
    return ordered.sort_values(sort, ascending=not descending, kind="stable", na_position="last")


@pytest.mark.parametrize(
    ("level", "sort", "descending"),
    [
        ("image", "data/brightness", False),
        ("image", "data/sharpness", True),
        ("image", "model/confidence@demo_detector:mean", True),  # has missing values
        ("object", "label/relative_area", False),
        ("prediction", "model/iou", True),
    ],
)
def test_pages_equal_pandas_sort(demo, data, level, sort, descending):
    """Paging through a sorted level gives every row once, in pandas' order, with its value."""
    table = _table(demo, level)
    got = _all_pages(data, Query(level=level, sort=sort, descending=descending))
    want = _expected(table, level, sort, descending)
    key = KEYS[level][-1]
    assert len(got) == len(table)
    assert got[key].tolist() == want[key].tolist()
    np.testing.assert_array_equal(got.value.to_numpy(float), want[sort].to_numpy(float))


def test_filters_equal_pandas(demo, data):
    """Value ranges, classes and the model narrow the rows exactly as the same pandas masks."""
    objects = _table(demo, "object")
    query = Query(
        level="object",
        ranges=(("label/relative_area", 0.002, 0.03), ("label/object_brightness", None, 0.5)),
        classes=("box", "disc"),
    )
    mask = (
        objects["label/relative_area"].between(0.002, 0.03)
        & (objects["label/object_brightness"] <= 0.5)
        & objects.category.isin(["box", "disc"])
    )
    got = sorted(data.keys(query).annotation_id)
    assert got == sorted(objects[mask].annotation_id) and 0 < len(got) < len(objects)
    assert data.page(query)["total"] == int(mask.sum())

    images = _table(demo, "image")
    annotations = load("dataset/annotations", VERSION, demo.settings)
    with_disc = set(annotations[annotations.category == "disc"].image_id)
    query = Query(classes=("disc",), ranges=(("data/brightness", 0.15, None),))
    want = images[images.image_id.isin(with_disc) & (images["data/brightness"] >= 0.15)]
    assert sorted(data.keys(query).image_id) == sorted(want.image_id) and len(want) > 0

    predictions = _table(demo, "prediction")
    query = Query(level="prediction", model="demo_detector", ranges=(("score", 0.5, None),))
    want = predictions[(predictions.model == "demo_detector") & (predictions.score >= 0.5)]
    assert sorted(data.keys(query).prediction_id) == sorted(want.prediction_id)


def test_flags_select_the_flagged_rows(demo, data):
    """Outlier, duplicate and label-error flags are the rows the analysis tables name."""
    outliers = load("analysis/outliers", VERSION, demo.settings)
    duplicates = load("analysis/duplicates", VERSION, demo.settings)
    errors = load("analysis/label_errors", VERSION, demo.settings)
    cases = [
        ("image", "outlier", set(outliers[outliers.level == "image"].key.astype(int))),
        ("object", "outlier", set(outliers[outliers.level == "object"].key.astype(int))),
        ("image", "duplicate", set(duplicates[duplicates.version == VERSION].image_id.astype(int))),
        ("image", "label_error", set(errors.image_id)),
        ("object", "label_error", set(errors.annotation_id.dropna().astype(int))),
    ]
    for level, flag, want in cases:
        got = set(data.keys(Query(level=level, flags=(flag,)))[KEYS[level][-1]].astype(int))
        assert got == want, (level, flag)
        assert want, (level, flag)  # the demo has each kind, so the test can fail
    predicted = outliers[outliers.level == "prediction"]
    got = data.keys(Query(level="prediction", flags=("outlier",)))
    assert set(zip(got.model, got.prediction_id.astype(int), strict=True)) == {
        (scope.removeprefix("model:"), int(key))
        for scope, key in zip(predicted.scope, predicted.key, strict=True)
    }


def test_named_slices_select_their_rows_at_every_level(demo, data):
    """A named slice selects its rows; a slice of another level selects through the image."""
    slices = demo.settings.slices
    images, objects = _table(demo, "image"), _table(demo, "object")
    dark = apply(find(slices, "dark"), images)
    assert sorted(data.keys(Query(slice="dark")).image_id) == sorted(dark.image_id)
    small = apply(find(slices, "small_objects"), objects)
    got = data.keys(Query(level="object", slice="small_objects")).annotation_id
    assert sorted(got) == sorted(small.annotation_id) and len(small) > 0
    got = data.keys(Query(level="image", slice="small_objects")).image_id
    assert sorted(got) == sorted(small.image_id.unique())
    got = data.keys(Query(level="object", slice="dark")).annotation_id
    assert sorted(got) == sorted(objects[objects.image_id.isin(dark.image_id)].annotation_id)


def test_filter_saved_as_slice_selects_the_same_rows(demo, data):
    """The YAML the explorer shows, parsed as configuration and applied by pandas (what
    ``qm show --slice`` and ``qm export --slice`` do), selects exactly the explorer's rows."""
    objects = _table(demo, "object")
    query = Query(
        level="object",
        ranges=(("label/relative_area", None, 0.02),),
        classes=("box", "triangle"),
        slice="small_objects",
    )
    saved = data.as_slice(query, "small_shapes")
    parsed = parse_slices(yaml.safe_load(saved["yaml"])["slices"])
    assert [s.name for s in parsed] == ["small_shapes"] and parsed[0].level == "object"
    want = sorted(apply(parsed[0], objects).annotation_id)
    assert sorted(data.keys(query).annotation_id) == want and want
    assert saved["left_out"] == []
    assert f"qm export {VERSION} --slice small_shapes --format coco" in "\n".join(saved["commands"])
    flagged = data.as_slice(Query(flags=("outlier",), classes=("disc",)), "x")
    assert flagged["left_out"] and "flag outlier" in flagged["left_out"]


def test_detail_has_boxes_values_and_evidence(demo, data):
    """One image's detail: its annotations' and predictions' boxes, its metric values and its
    outlier and label-error rows, equal to the stored tables."""
    errors = load("analysis/label_errors", VERSION, demo.settings)
    image_id = int(errors.image_id.iloc[0])
    detail = data.detail(str(image_id))
    annotations = load("dataset/annotations", VERSION, demo.settings)
    mine = annotations[annotations.image_id == image_id].sort_values("annotation_id")
    got = pd.DataFrame(detail["objects"])
    assert got.annotation_id.tolist() == mine.annotation_id.tolist()
    np.testing.assert_array_equal(
        got[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]],
        mine[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]],
    )
    objects = _table(demo, "object").set_index("annotation_id")
    assert got.set_index("annotation_id")["label/relative_area"].equals(
        objects.loc[mine.annotation_id, "label/relative_area"]
    )
    predictions = load("dataset/predictions", VERSION, demo.settings)
    assert len(detail["predictions"]) == int((predictions.image_id == image_id).sum()) > 0
    images = _table(demo, "image").set_index("image_id")
    assert detail["image"]["data/brightness"] == images.loc[image_id, "data/brightness"]
    outliers = load("analysis/outliers", VERSION, demo.settings)
    assert len(detail["outliers"]) == int((outliers.image_id == image_id).sum())
    assert len(detail["label_errors"]) == int((errors.image_id == image_id).sum()) > 0


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_http_api_answers_and_explains_bad_requests(demo, server):
    status, page = _post(f"{server}/api/page", {"query": {"sort": "data/brightness", "limit": 3}})
    assert status == 200 and len(page["rows"]) == 3
    status, body = _post(f"{server}/api/page", {"query": {"sort": "data/no_such_metric"}})
    assert status == 400 and "'data/no_such_metric' is not a column" in body["error"]
    status, body = _post(f"{server}/api/page", {"query": {"level": "pixel"}})
    assert status == 400 and "level 'pixel'" in body["error"]
    status, body = _post(f"{server}/api/page", {"version": "nope", "query": {}})
    assert status == 400 and "not materialized for 'nope'" in body["error"]
    status, raw = _get(f"{server}/thumb?id=999999")
    assert status == 404 and b"no image" in raw
    status, raw = _get(f"{server}/thumb?id=1&box=a,b")
    assert status == 400 and b"expected x,y,w,h" in raw
    # a thumbnail and a crop decode, at most 192 px
    first = page["rows"][0]["image_id"]
    status, raw = _get(f"{server}/thumb?id={first}")
    thumb = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and max(thumb.shape[:2]) <= 192
    status, raw = _get(f"{server}/thumb?id={first}&box=10,10,20,30")
    crop = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and crop.shape[:2] == (30 + 16, 20 + 16)  # 8 px of context each side
    status, raw = _get(f"{server}/image?id={first}")
    assert status == 200 and raw[:3] == b"\xff\xd8\xff"
    status, meta = _get(f"{server}/api/meta")
    meta = orjson.loads(meta)
    assert meta["versions"] == ["production", "train"] and meta["version"] == VERSION
    assert "label/class_flip" not in meta["levels"]["object"]["metrics"]  # empty in the demo


def test_cli_explains_a_storage_without_versions(tmp_path, capsys, monkeypatch):
    from qm_dagster.cli import main

    monkeypatch.setenv("QM_STORAGE", str(tmp_path / "empty"))
    assert main(["explore", "--port", "0"]) == 2
    assert "no materialized version" in capsys.readouterr().err


@pytest.mark.slow
def test_explorer_in_chromium(demo, server):
    """Sorted by brightness the darkest image comes first (the stored table's minimum); a
    range filter narrows the grid to the count pandas gives; clicking a card opens the image
    with its ground-truth and predicted boxes drawn. Screenshots are kept."""
    from tests.browser import artifact, chromium_page

    images = _table(demo, "image")
    annotations = load("dataset/annotations", VERSION, demo.settings)
    predictions = load("dataset/predictions", VERSION, demo.settings)
    with chromium_page() as page:
        page.goto(server + "/")
        page.wait_for_selector(".card")
        page.select_option("#sort", "data/brightness")
        darkest = images.loc[images["data/brightness"].idxmin()]
        first = page.locator(".card").first
        first.wait_for()
        page.wait_for_function(
            "id => document.querySelector('.card').dataset.id === id", arg=str(darkest.image_id)
        )
        assert float(first.get_attribute("data-value")) == darkest["data/brightness"]
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        page.screenshot(path=str(artifact("explorer-grid.png")))

        page.select_option("#range-column", "data/brightness")
        page.fill("#range-min", "0.2")
        page.fill("#range-max", "0.3")
        page.click("#range-add")
        want = int(images["data/brightness"].between(0.2, 0.3).sum())
        page.wait_for_function(f"() => document.getElementById('total').dataset.total === '{want}'")
        assert page.locator(".card").count() == min(want, 60) and 0 < want < len(images)

        page.click("[data-level=object]")
        page.select_option("#sort", "label/relative_area")
        page.wait_for_selector(".card[data-level=object][data-sort='label/relative_area']")
        card = page.locator(".card").first
        image_id = int(card.get_attribute("data-id"))
        card.click()
        page.wait_for_selector("#detail:not([hidden]) svg rect.gt")
        gt = page.locator("#detail svg rect.gt")
        assert gt.count() == int((annotations.image_id == image_id).sum())
        assert page.locator("#detail svg rect.pred").count() == int(
            (predictions.image_id == image_id).sum()
        )
        page.wait_for_function("() => [...document.querySelectorAll('svg image')].length === 1")
        page.screenshot(path=str(artifact("explorer-detail.png")))

        page.click("#detail-close")
        page.click("#slice-save")
        page.wait_for_selector("#slice-out:not([hidden])")
        assert "level: object" in page.inner_text("#slice-yaml")
        page.screenshot(path=str(artifact("explorer-slice.png")))


@pytest.mark.slow
def test_report_summary_in_chromium_names_the_drifted_metrics(demo):
    """The demo production report opened in Chromium: its first section lists the metrics the
    stored drift table marks drifted; the screenshot is kept."""
    from qm_dagster import storage
    from tests.browser import artifact, chromium_page

    drift = load("analysis/drift", VERSION, demo.settings)
    drifted = drift[drift.verdict == "drift"].sort_values("psi", ascending=False)
    url = storage.report_url(demo.settings.storage, VERSION)
    with chromium_page() as page:
        page.goto(storage.browser_url(url))
        summary = page.locator("#summary").locator("xpath=..").inner_text()
        assert len(drifted) > 0
        for row in drifted.head(5).itertuples():
            assert f"{row.metric} ({row.level})" in summary
        page.screenshot(path=str(artifact("report-summary.png")))


@pytest.mark.slow
def test_explorer_reads_its_tables_from_s3(demo, data, s3):
    """Outputs in an S3 store (a moto server through s3fs): DuckDB reads them through our
    filesystem, and pages, flags and slices equal the local ones."""
    import dataclasses

    import s3fs

    from qm_dagster.explore.query import TABLES
    from qm_dagster.explore.server import Explorer
    from tests.conftest import BUCKET

    fs = s3fs.S3FileSystem()
    local = demo.settings.storage
    for key in TABLES.values():
        fs.put(f"{local}/{key}/{VERSION}.parquet", f"{BUCKET}/storage/{key}/{VERSION}.parquet")
    settings = dataclasses.replace(demo.settings, storage=f"s3://{BUCKET}/storage")
    assert Explorer(settings).default == VERSION  # the only version stored there
    remote = VersionData(settings, VERSION)
    for query in (
        Query(sort="data/brightness", limit=10),
        Query(level="object", sort="label/relative_area", flags=("outlier",), limit=10),
        Query(level="object", slice="small_objects", classes=("box",)),
    ):
        assert remote.page(query) == data.page(query)


def test_detail_shows_the_duplicate_group_capped(demo, data, monkeypatch):
    """An image's duplicate group: its members (this version's and the reference's) and their
    count; a big group is cut at GROUP_SHOWN members, the count still whole."""
    from qm_dagster.explore import query

    duplicates = load("analysis/duplicates", VERSION, demo.settings)
    mine = duplicates[duplicates.version == VERSION].iloc[0]
    group = duplicates[duplicates.group == mine.group]
    detail = data.detail(str(mine.image_id))
    assert detail["duplicate_count"] == len(group) >= 2
    got = {(d["version"], d["image_id"]) for d in detail["duplicates"]}
    assert got == set(zip(group.version, group.image_id, strict=True))
    monkeypatch.setattr(query, "GROUP_SHOWN", 1)
    detail = data.detail(str(mine.image_id))
    assert len(detail["duplicates"]) == 1 and detail["duplicate_count"] == len(group)


def test_unlabeled_version_slice_exports_as_a_new_version(settings, tmp_path):
    """An unlabeled version (image files only): no object or prediction rows, string image
    ids; the saved slice's commands export it as a new version, and that export (the slice
    parsed from the shown YAML) holds exactly the images the explorer selected."""
    from qm_dagster.dataset import DatasetRoot
    from qm_dagster.export import export_slice
    from qm_dagster.importers import ImportSpec, import_version
    from tests.conftest import materialize_version
    from tests.images import real_photos, write_image

    for name, rgb in real_photos().items():
        write_image(tmp_path / "photos" / f"{name}.png", rgb)
    import_version(ImportSpec(images=str(tmp_path / "photos")), settings.datasets, "u")
    assert materialize_version(settings, "u").success
    data = VersionData(settings, "u")
    meta = data.meta()
    assert meta["levels"]["image"]["rows"] == 4 and meta["levels"]["object"]["rows"] == 0
    table = load("analysis/quality_table/image", "u", settings)
    cut = float(table["data/brightness"].median())
    query = Query(ranges=(("data/brightness", None, cut),))
    chosen = sorted(data.keys(query).image_id)
    assert chosen == sorted(table[table["data/brightness"] <= cut].image_id) and 0 < len(chosen) < 4
    saved = data.as_slice(query, "darker")
    assert saved["commands"][-1] == "qm export u --slice darker --name u-darker"
    (parsed,) = parse_slices(yaml.safe_load(saved["yaml"])["slices"])
    version = DatasetRoot(settings.datasets).version("u")
    new = export_slice(version, apply(parsed, table), parsed, settings.datasets, "u-darker")
    assert sorted(new.image_table().file_name) == chosen


def test_image_urls_of_a_page_are_remembered_and_equal_the_manifest(demo):
    """The images a page showed are found again without a manifest scan (thumbnails are asked
    right after), with the manifest's URL and the id in its own type; the URL stays server-side."""
    data = VersionData(demo.settings, VERSION)  # a fresh one: nothing remembered yet
    manifest = load("dataset/manifest", VERSION, demo.settings).set_index("image_id").url
    page = data.page(Query(sort="data/brightness", limit=5))
    assert all("url" not in row for row in page["rows"])
    ids = [row["image_id"] for row in page["rows"]]
    assert set(data._urls) == {str(i) for i in ids}
    for image_id in ids:
        assert data.image_url(str(image_id)) == (manifest[image_id], image_id)
    other = next(i for i in manifest.index if i not in ids)  # not remembered: the manifest's
    assert data.image_url(str(other)) == (manifest[other], other)
