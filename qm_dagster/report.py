"""A self-contained HTML report of one version: histograms (with the reference's overlaid),
galleries of the lowest and highest images per metric, outliers, duplicates, drift, sliced
evaluation and the label-error queue with boxes drawn. All dataset text is escaped."""

from __future__ import annotations

import base64
import html
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import pandas as pd

from qm_dagster import report_charts as charts
from qm_dagster import storage
from qm_dagster.passes.decode import decode

THUMB = 112
GALLERY = 6
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}
h2{border-bottom:1px solid #ccc;margin-top:32px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.metric{display:inline-block;margin:8px;vertical-align:top;max-width:460px}
.gallery{display:flex;flex-wrap:wrap;gap:4px;align-items:flex-end}
.gallery .side{width:100%;font-size:12px;color:#555;margin-top:4px}
.gallery .side.high{border-top:2px solid #bbb;padding-top:2px}
figure{margin:0;font-size:11px;text-align:center}figure img{border:1px solid #bbb;display:block}
figcaption{font-variant-numeric:tabular-nums}
.group{border:1px solid #ddd;border-radius:4px;padding:6px;margin:6px 0;display:flex;gap:6px;flex-wrap:wrap}
.bad{color:#b00}"""


def _thumb(url: str, boxes: list[tuple[float, float, float, float]] = ()) -> str:
    try:
        bgr = decode(storage.read_bytes(url))
    except OSError:
        bgr = None
    if bgr is None:
        return ""
    for x, y, w, h in boxes:
        cv2.rectangle(bgr, (int(x), int(y)), (int(x + w), int(y + h)), (0, 0, 255), 3)
    scale = THUMB / max(bgr.shape[:2])
    small = cv2.resize(
        bgr,
        (max(1, int(bgr.shape[1] * scale)), max(1, int(bgr.shape[0] * scale))),
        interpolation=cv2.INTER_AREA,
    )
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def _thumbs(urls: set[str]) -> dict[str, str]:
    """``_thumb`` of each image once, on threads (OpenCV's decode and resize release the GIL)."""
    ordered = sorted(urls)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(ordered, pool.map(_thumb, ordered), strict=True))


def _extremes(values: pd.Series) -> list:
    """Row labels of the ``GALLERY`` lowest values, then of the highest (highest first)."""
    ranked = values.dropna().sort_values()
    return [*ranked.index[:GALLERY], *ranked.index[-GALLERY:][::-1]]


def _table(frame: pd.DataFrame, limit: int = 50) -> str:
    """An HTML table of the first ``limit`` rows; columns empty in all of them left out."""
    if frame is None or frame.empty:
        return "<p><em>none</em></p>"
    shown = frame.head(limit)
    shown = shown[[c for c in shown.columns if not _empty(shown[c])]]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if isinstance(v, (int, float)) else ''}>{html.escape(_fmt(v))}</td>"
            for v in row
        )
        + "</tr>"
        for row in shown.itertuples(index=False)
    )
    more = f"<p>{len(frame) - limit} more rows</p>" if len(frame) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _empty(column: pd.Series) -> bool:
    """No value in the column: all missing, NaN or empty text."""
    return bool(
        column.isna().all() or column.astype(str).str.strip().isin(["", "nan", "None"]).all()
    )


def _sliced_section(frame: pd.DataFrame | None, batch: charts.ChartBatch) -> str:
    """Each model's whole-version numbers, then AP50 per bucket of every sliced metric."""
    head = "<h2 id='sliced_evaluation'>Sliced evaluation</h2>"
    if frame is None or frame.empty:
        return head + _table(frame)
    overall = frame[frame.metric == "all"]
    shown = [
        c
        for c in (
            "model",
            "AP",
            "AP50",
            "AP75",
            "AR100",
            "precision",
            "recall",
            "f1",
            "tp",
            "fp",
            "fn",
        )
        if c in overall
    ]
    bbox = frame[frame.iou_type == "bbox"] if "iou_type" in frame else frame
    plots = "".join(
        f"<div class='metric'><h3>AP50 by {html.escape(m)}</h3>"
        f"<img src='{batch.sliced(bbox, m)}' alt='AP50 by {html.escape(m)}'></div>"
        for m in dict.fromkeys(bbox.metric)
        if m != "all" and not str(m).startswith("slice:")
    )
    named = frame[frame.metric.astype(str).str.startswith("slice:")]
    return (
        head
        + _table(overall[shown])
        + f"<div class='charts'>{plots}</div>"
        + (
            "<h3>Named slices</h3>"
            + _table(named[["model", "metric", "AP50", "recall", "n_images"]])
            if len(named)
            else ""
        )
    )


def _figure(src: str, name: str, caption: str) -> str:
    """A thumbnail with its value (or version) under it; the file name on hover."""
    return f"<figure>{_img(src, name)}<figcaption>{html.escape(caption)}</figcaption></figure>"


DUPLICATE_GROUPS = 12  # groups shown as pictures; the table lists every group
GROUP_PICTURES = 8  # pictures of one group


def _duplicates_section(frame: pd.DataFrame | None, urls: dict[str, pd.Series]) -> str:
    """The first groups as rows of pictures with version and file name, then the table of all
    groups. ``urls``: image URLs by image id of each version whose images can be shown."""
    head = "<h2 id='duplicates'>Duplicates</h2>"
    if frame is None or frame.empty:
        return head + _table(frame)
    groups = list(dict.fromkeys(frame.group))[:DUPLICATE_GROUPS]
    # at most GROUP_PICTURES of each group (a group of near copies can hold thousands)
    mine = frame[frame.group.isin(groups)].groupby("group", sort=False).head(GROUP_PICTURES)
    sizes = frame.group.value_counts()

    def url(row) -> str:
        found = urls.get(row.version)
        return "" if found is None else str(found.get(row.image_id, ""))

    thumbs = _thumbs({u for r in mine.itertuples() if (u := url(r))})
    rows = []
    for group, members in mine.groupby("group", sort=False):
        figures = "".join(
            _figure(thumbs.get(url(r), ""), str(r.file_name), f"{r.version}: {r.file_name}")
            for r in members.itertuples()
        )
        kind = html.escape(str(members.kind.iloc[0]))
        rest = int(sizes[group]) - len(members)
        more_here = f"<span>and {rest} more</span>" if rest > 0 else ""
        rows.append(
            f"<div class='group'><b>group {html.escape(str(group))}</b> ({kind} copies, "
            f"{int(sizes[group])} images){figures}{more_here}</div>"
        )
    more = len(dict.fromkeys(frame.group)) - len(groups)
    note = f"<p>{more} more groups in the table</p>" if more > 0 else ""
    return head + "".join(rows) + note + _table(frame)


def _drifted_first(drift: pd.DataFrame | None) -> pd.DataFrame | None:
    """The drift table with the drifted metrics first, largest PSI first within each verdict."""
    if drift is None or drift.empty or "verdict" not in drift:
        return drift
    order = drift.assign(_drift=drift.verdict == "drift")
    keys = ["_drift", "psi"] if "psi" in drift else ["_drift"]
    order = order.sort_values(keys, ascending=False, kind="stable", na_position="last")
    return order.drop(columns="_drift")


def _outliers_section(frame: pd.DataFrame | None) -> str:
    """Per level, metric and scope: how many values fall outside the fences, how many of them
    severely, and the fences; the worst values are the explorer's (``qm explore``, flag
    outlier)."""
    head = "<h2 id='outliers'>Outliers</h2>"
    if frame is None or frame.empty:
        return head + _table(frame)
    summary = (
        frame.assign(severe=frame.severity == "severe")
        .groupby(["level", "metric", "scope"], sort=False)
        .agg(
            flagged=("value", "size"),
            severe=("severe", "sum"),
            rule=("rule", "first"),
            lower=("lower", "first"),
            upper=("upper", "first"),
            lowest=("value", "min"),
            highest=("value", "max"),
        )
        .reset_index()
        .sort_values(["severe", "flagged"], ascending=False)
    )
    return head + _table(summary)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "\u2013" if v != v else f"{v:.4g}"
    return str(v)


def _img(src: str, title: str) -> str:
    return (
        f'<img src="{src}" title="{html.escape(title)}" alt="{html.escape(title)}">' if src else ""
    )


SUMMARY_ROWS = 5  # drifted metrics, worst slices per model, label errors named in the summary


def _drift_summary(drift: pd.DataFrame | None) -> str:
    if drift is None or drift.empty:
        return "<li>Drift: <em>no reference version, or not tested</em></li>"
    shown = ["level", "psi", "reference_mean", "current_mean"]
    drift = drift.reindex(columns=[*drift.columns, *(c for c in shown if c not in drift)])
    drifted = drift[drift.verdict == "drift"].sort_values(
        "psi", ascending=False, na_position="last"
    )
    head = f"<a href='#drift'>Drift</a>: {len(drifted)} of {len(drift)} tested metrics drifted"
    items = "".join(
        f"<li>{html.escape(f'{r.metric} ({r.level})')}: PSI {_fmt(r.psi)}, "
        f"mean {_fmt(r.reference_mean)} &rarr; {_fmt(r.current_mean)}</li>"
        for r in drifted.head(SUMMARY_ROWS).itertuples()
    )
    return f"<li>{head}{f'<ul>{items}</ul>' if items else ''}</li>"


def _slices_summary(sliced: pd.DataFrame | None) -> str:
    """Per model, the bbox buckets with the lowest AP50 against the model's overall AP50."""
    if sliced is None or sliced.empty or "AP50" not in sliced:
        return "<li>Evaluation: <em>no model</em></li>"
    rows = sliced[sliced.iou_type == "bbox"] if "iou_type" in sliced else sliced
    out = []
    for model, group in rows.groupby("model"):
        overall = group[group.metric == "all"].AP50
        buckets = group[(group.metric != "all") & (group.AP50 >= 0)].nsmallest(SUMMARY_ROWS, "AP50")
        worst = ", ".join(
            html.escape(f"{r.metric} {_bucket(r)} ({r.n_images} images)") + f" {_fmt(r.AP50)}"
            for r in buckets.itertuples()
        )
        whole = _fmt(overall.iloc[0]) if len(overall) else "?"
        out.append(
            f"<li><a href='#sliced_evaluation'>{html.escape(str(model))}</a>: AP50 {whole}; "
            f"worst slices: {worst or '<em>none</em>'}</li>"
        )
    return "".join(out)


def _bucket(row) -> str:
    """A bucket's value range (``lo``-``hi``), or the bucket's name when it has none."""
    lo, hi = getattr(row, "lo", None), getattr(row, "hi", None)
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return f"bucket {row.bucket}"
    return charts.bucket_label(float(lo), float(hi))


def _classification_summary(sections: dict[str, pd.DataFrame]) -> str:
    """Per model of a classification version: accuracy and macro F1, the buckets with the
    lowest accuracy, and how many labels cleanlab doubts."""
    frame, issues = sections.get("class_evaluation"), sections.get("class_label_issues")
    if frame is None or frame.empty:
        return ""
    out = []
    for model, group in frame.groupby("model"):
        whole = group[group.metric == "all"].iloc[0]
        buckets = group[(group.metric != "all") & (group.n_images > 0)]
        worst = ", ".join(
            html.escape(f"{r.metric} {_bucket(r)} ({r.n_images} images)") + f" {_fmt(r.accuracy)}"
            for r in buckets.nsmallest(SUMMARY_ROWS, "accuracy").itertuples()
        )
        doubted = 0 if issues is None else int((issues.model == model).sum())
        out.append(
            f"<li><a href='#class_evaluation'>{html.escape(str(model))}</a>: accuracy "
            f"{_fmt(whole.accuracy)}, macro F1 {_fmt(whole.macro_f1)}; worst slices: "
            f"{worst or '<em>none</em>'}; <a href='#class_label_issues'>{doubted} labels "
            "doubted</a> (cleanlab)</li>"
        )
    return "".join(out)


def _classification_section(
    sections: dict[str, pd.DataFrame], urls: pd.Series, names: pd.Series
) -> str:
    """Accuracy by slice and the label issues as pictures, label and suggested class."""
    frame, issues = sections.get("class_evaluation"), sections.get("class_label_issues")
    if frame is None or frame.empty:
        return ""
    parts = [
        "<h2 id='class_evaluation'>Classification: accuracy by slice</h2>",
        _table(frame[frame.n_images > 0].sort_values(["model", "accuracy"]), limit=30),
        "<h2 id='class_label_issues'>Classification: label issues (cleanlab)</h2>",
    ]
    if issues is None or issues.empty:
        return "".join(parts) + "<p><em>none</em></p>"
    shown = issues.head(20)
    thumbs = _thumbs({urls[i] for i in shown.image_id if i in urls.index})
    for row in shown.itertuples():
        src = thumbs.get(urls.get(row.image_id, ""), "")
        caption = f"{names.get(row.image_id, row.image_id)}: {row.label} -> {row.suggested}"
        parts.append(
            f"<div class='metric'>{_img(src, caption)}<br><b>{html.escape(str(row.label))}"
            f"</b> labelled, {html.escape(str(row.model))} says "
            f"<b>{html.escape(str(row.suggested))}</b> ({row.suggested_probability:.2f}); "
            f"label quality {row.label_quality:.3f}</div>"
        )
    return "".join(parts)


def _counts_summary(sections: dict[str, pd.DataFrame], images: int) -> str:
    outliers = sections.get("outliers")
    duplicates = sections.get("duplicates")
    errors = sections.get("label_errors")
    parts = []
    if outliers is not None:
        flagged = outliers[outliers.level == "image"].key.nunique() if len(outliers) else 0
        severe = int((outliers.severity == "severe").sum()) if len(outliers) else 0
        parts.append(
            f"<li><a href='#outliers'>Outliers</a>: {flagged} of {images} images flagged, "
            f"{severe} severe values</li>"
        )
    if duplicates is not None:
        groups = duplicates.group.nunique() if len(duplicates) else 0
        parts.append(
            f"<li><a href='#duplicates'>Duplicates</a>: {groups} groups, "
            f"{len(duplicates)} images in them</li>"
        )
    if errors is not None:
        top = "".join(
            f"<li>{html.escape(str(r.kind))} {r.score:.2f}: {html.escape(str(r.evidence))}</li>"
            for r in errors.head(SUMMARY_ROWS).itertuples()
        )
        parts.append(
            f"<li><a href='#label_errors'>Label errors</a>: {len(errors)} suspected"
            f"{f'<ul>{top}</ul>' if top else ''}</li>"
        )
    return "".join(parts)


def summary(sections: dict[str, pd.DataFrame], images: int) -> str:
    """What changed, where each model fails, what to look at first: the report's first section."""
    return (
        "<h2 id='summary'>Summary</h2><ul>"
        + _drift_summary(sections.get("drift"))
        + _slices_summary(sections.get("sliced_evaluation"))
        + _classification_summary(sections)
        + _counts_summary(sections, images)
        + "</ul>"
    )


def build_report(
    version: str,
    meta: dict[str, str],
    manifest: pd.DataFrame,
    image_table: pd.DataFrame,
    reference_table: pd.DataFrame | None,
    annotations: pd.DataFrame,
    sections: dict[str, pd.DataFrame],
    reference_urls: pd.Series | None = None,
    workers: int = 1,
) -> str:
    """The report's HTML. ``sections``: outliers, duplicates, drift, sliced_evaluation,
    label_errors tables of this version; ``reference_urls``: the reference's image URLs by
    image id (its duplicates shown as pictures too); ``workers``: processes that may draw the
    charts (``ChartBatch``)."""
    batch = charts.ChartBatch(workers)
    urls = manifest.set_index("image_id").url
    names = manifest.set_index("image_id").file_name
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>qm-dagster report "
        f"{html.escape(version)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Version {html.escape(version)}</h1>",
        "<p>"
        + ", ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in meta.items())
        + f", images: {len(manifest)}, objects: {len(annotations)}</p>",
        summary(sections, len(image_table)),
        "<h2 id='metrics'>Image metrics</h2>",
        "<p>Blue bars: this version"
        + (
            "; red outlines: the reference version, scaled to this version's count"
            if reference_table is not None
            else ""
        )
        + ". Galleries: the lowest and the highest images.</p>",
    ]
    columns = [
        c for c in image_table.columns if c.startswith("data/") and "@" not in c and ":" not in c
    ]
    values = {c: pd.to_numeric(image_table[c], errors="coerce") for c in columns}
    shown = {c: _extremes(values[c]) for c in columns}
    ids = image_table.image_id
    thumbs = _thumbs({urls[ids[i]] for rows in shown.values() for i in rows})
    for col in columns:
        ref = None
        if reference_table is not None and col in reference_table:
            ref = pd.to_numeric(reference_table[col], errors="coerce").to_numpy(float)
        chart = batch.histogram(values[col].to_numpy(float), col, reference=ref)
        figures = [
            _figure(thumbs[urls[ids[i]]], str(names[ids[i]]), f"{values[col][i]:.4g}")
            for i in shown[col]
        ]
        half = len(figures) // 2
        parts.append(
            f"<div class='metric' id='m-{html.escape(col)}'><h3>{html.escape(col)}</h3>"
            f"<img src='{chart}' alt='histogram of {html.escape(col)}'>"
            f"<div class='gallery'><div class='side'>lowest</div>{''.join(figures[:half])}"
            f"<div class='side high'>highest</div>{''.join(figures[half:])}</div></div>"
        )
    parts.append(
        "<h2 id='drift'>Drift against the reference</h2>"
        + _table(_drifted_first(sections.get("drift")), limit=60)
    )
    parts.append(_sliced_section(sections.get("sliced_evaluation"), batch))
    parts.append(_classification_section(sections, urls, names))
    parts.append(_outliers_section(sections.get("outliers")))
    found = {version: urls}
    if reference_urls is not None and meta.get("reference"):
        found[meta["reference"]] = reference_urls
    parts.append(_duplicates_section(sections.get("duplicates"), found))
    parts.append("<h2 id='label_errors'>Label-error queue</h2>")
    queue = sections.get("label_errors")
    if queue is not None and not queue.empty:
        boxes = annotations.set_index("annotation_id")[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]]
        cards = []
        for row in queue.head(20).itertuples():
            box = [tuple(boxes.loc[row.annotation_id])] if row.annotation_id in boxes.index else []
            src = _thumb(urls[row.image_id], box) if row.image_id in urls.index else ""
            cards.append(
                f"<div class='metric'>{_img(src, str(row.evidence))}<br>"
                f"<b>{html.escape(str(row.kind))}</b> {row.score:.2f}<br>"
                f"{html.escape(str(row.evidence))}</div>"
            )
        parts.append("".join(cards))
    else:
        parts.append("<p><em>none</em></p>")
    parts.append("</body></html>")
    return batch.fill("\n".join(parts))
