"""The HTML report: every section present, galleries and histograms embedded, dataset text
escaped, and the page rendered in headless Chromium."""

from __future__ import annotations

import re

import pandas as pd

from qm_dagster import storage
from qm_dagster.report import build_report
from tests.images import real_photos, write_image


def _hostile_report(tmp_path) -> str:
    """A report over real photos, one named like a script tag, with hostile evidence text."""
    evil = "a<script>alert(1)</script>.png"
    rows = []
    for i, (name, rgb) in enumerate(real_photos().items()):
        file_name = evil if i == 0 else f"{name}.png"
        write_image(tmp_path / file_name, rgb)
        rows.append({"image_id": i + 1, "file_name": file_name, "url": str(tmp_path / file_name)})
    manifest = pd.DataFrame(rows)
    table = manifest[["image_id", "file_name"]].assign(**{"data/brightness": [0.1, 0.5, 0.3, 0.9]})
    annotations = pd.DataFrame(
        {
            "annotation_id": [7],
            "image_id": [1],
            "bbox_x": [10.0],
            "bbox_y": [10.0],
            "bbox_w": [50.0],
            "bbox_h": [40.0],
        }
    )
    queue = pd.DataFrame(
        {
            "kind": ["missing"],
            "score": [0.9],
            "image_id": [1],
            "annotation_id": [7],
            "evidence": ["<img src=x onerror=alert(1)>"],
        }
    )
    drift = pd.DataFrame({"metric": ["data/brightness"], "verdict": ["drift"]})
    sliced = pd.DataFrame(
        {
            "model": ["det<b>"] * 3,
            "metric": ["all", "data/brightness", "data/brightness"],
            "bucket": [0, 0, 1],
            "lo": [float("nan"), 0.1, 0.5],
            "hi": [float("nan"), 0.5, 0.9],
            "n_images": [4, 2, 2],
            "AP50": [0.7, 0.4, 0.9],
            "recall": [0.8, 0.5, 0.95],
        }
    )
    page = build_report(
        "v<1>",
        {"kind": "production", "reference": "train"},
        manifest,
        table,
        table.assign(**{"data/brightness": [0.5, 0.6, 0.7, 0.8]}),
        annotations,
        {"drift": drift, "label_errors": queue, "sliced_evaluation": sliced},
    )
    return page


def test_report_sections_galleries_and_escaping(tmp_path):
    page = _hostile_report(tmp_path)
    for section in (
        "summary",
        "metrics",
        "drift",
        "sliced_evaluation",
        "outliers",
        "duplicates",
        "label_errors",
    ):
        assert f"id='{section}'" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "onerror=alert" not in page.replace("&lt;img src=x onerror=alert(1)&gt;", "")
    images = re.findall(r"src=['\"]data:image/(svg\+xml|jpeg);base64,", page)
    assert images.count("svg+xml") == 2 and images.count("jpeg") >= 5  # histogram, AP50; thumbs
    # the worst slice named by its value range and size; no column that is empty throughout
    assert "data/brightness 0.1\u20130.5 (2 images) 0.4" in page
    assert "<td>nan</td>" not in page
    url = str(tmp_path / "r" / "v.html")
    storage.write_bytes_atomic(url, page.encode())
    assert storage.read_bytes(url).decode().startswith("<!doctype html>")


def test_report_renders_in_chromium(tmp_path):
    """Open a report in headless Chromium: galleries load their images, tables render, the
    hostile file name and evidence run no script; the screenshot is kept."""
    from tests.browser import artifact, chromium_page

    path = tmp_path / "report.html"
    path.write_text(_hostile_report(tmp_path), encoding="utf-8")
    with chromium_page() as page:
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete, e.naturalWidth])"
        )
        assert len(images) >= 8 and all(done and width > 0 for done, width in images)
        drift = page.locator("#drift + table")
        assert drift.count() == 1 and "data/brightness" in drift.inner_text()
        for section in ("drift", "label_errors", "outliers", "duplicates"):
            assert page.locator(f"#{section}").count() == 1, section
        assert "<img src=x onerror=alert(1)>" in page.inner_text("body")  # shown, not run
        overall = page.locator("#sliced_evaluation + table")
        assert "det<b>" in overall.inner_text() and "0.7" in overall.inner_text()
        assert page.locator("img[alt='AP50 by data/brightness']").count() == 1
        page.screenshot(path=str(artifact("report.png")), full_page=True)
        assert dialogs == []


def test_summary_names_what_drifted_and_where_the_model_fails(demo):
    """The demo production report's first section: the drifted metrics (the stored drift
    table's, largest PSI first), each model's AP50 and its worst slices, the counts."""
    from qm_dagster import load

    settings = demo.settings
    page = storage.read_bytes(storage.report_url(settings.storage, "production")).decode()
    assert page.index("id='summary'") < page.index("id='metrics'")
    summary = page[page.index("id='summary'") : page.index("id='metrics'")]
    drift = load("analysis/drift", "production", settings)
    drifted = drift[drift.verdict == "drift"].sort_values("psi", ascending=False)
    assert f"{len(drifted)} of {len(drift)} tested metrics drifted" in summary
    assert len(drifted) > 0
    for row in drifted.head(5).itertuples():
        assert f"{row.metric} ({row.level})" in summary
    sliced = load("analysis/sliced_evaluation", "production", settings)
    overall = sliced[(sliced.metric == "all") & (sliced.iou_type == "bbox")].AP50.item()
    assert f"demo_detector</a>: AP50 {overall:.4g}" in summary
    errors = load("analysis/label_errors", "production", settings)
    assert f"{len(errors)} suspected" in summary


def _svg(url: str) -> str:
    import base64

    assert url.startswith("data:image/svg+xml;base64,")
    return base64.b64decode(url.split(",", 1)[1]).decode()


def test_charts_name_bucket_ranges_and_mark_empty_buckets():
    """AP50 bars are labelled with each bucket's value range and image count (not q0..q4); a
    bucket without ground truth (AP50 -1) is written out, not drawn; tick labels are compact
    and a metric spanning decades gets a log axis."""
    import numpy as np

    from qm_dagster import report_charts

    sliced = pd.DataFrame(
        {
            "model": ["m"] * 3,
            "metric": ["all", "data/area", "data/area"],
            "bucket": [0, 0, 1],
            "lo": [float("nan"), 1000.0, 250_000.0],
            "hi": [float("nan"), 250_000.0, 1_790_000.0],
            "n_images": [20, 11, 9],
            "AP50": [0.5, -1.0, 0.625],
        }
    )
    svg = _svg(report_charts.sliced(sliced, "data/area"))
    assert "1k\u2013250k" in svg and "250k\u20131.79M" in svg and "e+0" not in svg
    assert "11 images" in svg and "no ground truth" in svg and "0.62" in svg
    assert "-1" not in svg.split("<text")[-1]  # no bar label at -1
    values = np.geomspace(1, 1e6, 200)
    assert "(log scale)" in _svg(report_charts.histogram(values, "data/sharpness"))
    linear = _svg(report_charts.histogram(np.linspace(0, 300_000, 50), "data/area"))
    assert "(log scale)" not in linear and "300k" in linear and "e+05" not in linear


def test_a_chart_batch_draws_on_the_fork_servers_workers_what_this_process_draws(monkeypatch):
    """The report's charts are placeholders until ``fill``; with two workers and the fork
    server up they are drawn on a pool, and each lands where it was asked for, byte for byte
    the chart drawn here directly (a fixed SVG hash salt makes a chart's bytes repeatable)."""
    import numpy as np

    from qm_dagster import report_charts
    from qm_dagster.passes import pool

    rng = np.random.default_rng(3)
    values = [rng.normal(size=300), rng.gamma(2.0, size=200), np.arange(5.0)]
    sliced = pd.DataFrame(
        {"model": ["m", "m"], "metric": ["all", "data/area"], "bucket": [0, 0], "lo": [0.0, 0.0],
         "hi": [1.0, 1.0], "n_images": [4, 4], "AP50": [0.5, 0.25]}
    )  # fmt: skip
    expected = "|".join(
        [*(report_charts.histogram(v, f"data/m{i}") for i, v in enumerate(values)),
         report_charts.sliced(sliced, "data/area")]
    )  # fmt: skip
    pools = []
    real_pool = pool.process_pool
    monkeypatch.setattr(pool, "process_pool", lambda n: pools.append(n) or real_pool(n))
    pool.start_fork_server()
    for workers in (1, 2):
        batch = report_charts.ChartBatch(workers)
        text = "|".join(
            [*(batch.histogram(v, f"data/m{i}") for i, v in enumerate(values)),
             batch.sliced(sliced, "data/area")]
        )  # fmt: skip
        assert "data:" not in text
        assert batch.fill(text) == expected
    assert pools == [2]  # the batch of two workers, and only it, drew on a pool


def test_a_large_duplicate_group_shows_a_few_pictures_and_counts_the_rest(tmp_path):
    """A group of near copies can hold thousands of images (the generated 100k version's do):
    the report draws at most GROUP_PICTURES of each and says how many more there are."""
    from qm_dagster.report import GROUP_PICTURES, _duplicates_section
    from tests.images import checkerboard

    write_image(tmp_path / "a.png", checkerboard(40, 60))
    members = 100
    frame = pd.DataFrame(
        {
            "group": 0,
            "kind": "near",
            "version": "v",
            "image_id": range(members),
            "file_name": [f"f{i}.png" for i in range(members)],
            "content_hash": "h",
        }
    )
    urls = pd.Series(str(tmp_path / "a.png"), index=range(members))
    html = _duplicates_section(frame, {"v": urls})
    pictures = html[: html.index("<table>")]
    assert pictures.count("<figure>") == GROUP_PICTURES < members
    assert pictures.count("data:image/jpeg") == GROUP_PICTURES
    assert f"and {members - GROUP_PICTURES} more" in pictures and "100 images" in pictures
