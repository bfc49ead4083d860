"""Analysis assets over every metric of every level: quality tables, outliers, drift, sliced
evaluation, label errors, metric importance and the HTML report."""

import dagster as dg
import pandas as pd

from assets.metadata import drift_chart, sliced_charts, table_preview
from assets.partitions import dataset_versions
from assets.reference import reference_key
from qm_dagster import classification as cls
from qm_dagster import storage
from qm_dagster.annotators import annotator_table
from qm_dagster.checks import Check
from qm_dagster.checks import evaluate as evaluate_check
from qm_dagster.errors import QmError
from qm_dagster.evaluation import STATS
from qm_dagster.importance import metric_importance
from qm_dagster.label_errors import COLUMNS as LABEL_ERROR_COLUMNS
from qm_dagster.label_errors import label_errors
from qm_dagster.metrics.registry import metrics
from qm_dagster.outliers import all_outliers, multivariate_scores, outlier_shares
from qm_dagster.outliers import rules as outlier_rules
from qm_dagster.quality_table import (
    IMAGE_BASE,
    OBJECT_BASE,
    PREDICTION_BASE,
    image_table,
    metric_frames,
    object_table,
    prediction_table,
)
from qm_dagster.sliced import NamedSlices, image_slices, sliced_evaluation
from qm_dagster.slices import Slice
from resources.dataset import QmResource
from resources.io_manager import COLUMNS

# metric tables made from the embeddings as a whole (assets/similarity.py), not the registry
EXTRA_METRIC_ASSETS = (
    "data/uniqueness",
    "data/diversity",
    "label/neighbour_agreement",
    "label/class_neighbour_agreement",
)
CHARTED = ["data/brightness", "data/sharpness", "label/object_area"]  # charts in the UI panel
REPORT_SECTIONS = (
    "outliers",
    "duplicates",
    "drift",
    "sliced_evaluation",
    "label_errors",
    "class_evaluation",
    "class_label_issues",
)


def metric_keys(metric_modules: tuple[str, ...], on_predictions: bool = False) -> list[str]:
    """Asset keys of every metric table (built-in and configured custom ones; object pixel
    metrics of predicted objects when they are configured, ``on_predictions``)."""
    specs = metrics(None, metric_modules, on_predictions)
    return sorted({s.asset_key for s in specs} | set(EXTRA_METRIC_ASSETS) | set(cls.METRICS))


TABLES = {
    "manifest": ["dataset", "manifest"],
    "annotations": ["dataset", "annotations"],
    "categories": ["dataset", "categories"],
    "predictions": ["dataset", "predictions"],
    "matches": ["model", "matching"],
    "class_labels": ["dataset", "classifications"],
    "class_predictions": ["dataset", "class_predictions"],
    "image_table": ["analysis", "quality_table", "image"],
    "object_table": ["analysis", "quality_table", "object"],
    "prediction_table": ["analysis", "quality_table", "prediction"],
    "ref_manifest": reference_key(("dataset", "manifest")),
    "ref_images": reference_key(("analysis", "quality_table", "image")),
    "ref_objects": reference_key(("analysis", "quality_table", "object")),
    "ref_predictions": reference_key(("analysis", "quality_table", "prediction")),
}


def _named(*names: str, columns: dict[str, list[str]] | None = None) -> dict[str, dg.AssetIn]:
    """Inputs by the parameter names the analysis assets use for the version's tables; a name
    in ``columns`` loads only those columns of its table."""
    columns = columns or {}
    return {
        n: dg.AssetIn(key=TABLES[n], metadata={COLUMNS: columns[n]} if n in columns else None)
        for n in names
    }


def _ins(keys: list[str]) -> dict[str, dg.AssetIn]:
    return {k.replace("/", "__"): dg.AssetIn(key=k.split("/")) for k in keys}


def _by_key(inputs: dict[str, pd.DataFrame], keys: list[str]) -> dict[str, pd.DataFrame]:
    return {k: inputs[k.replace("/", "__")] for k in keys}


def build_analysis_assets(
    metric_modules: tuple[str, ...] = (),
    checks: tuple[Check, ...] = (),
    slices: tuple[Slice, ...] = (),
    evaluation: dict | None = None,
    drift_tests: tuple = (),
    fence_rules: tuple = (),
    on_predictions: bool = False,
) -> list[dg.AssetsDefinition]:
    """The analysis assets; ``checks`` (from the checks YAML) become asset checks of the assets
    they target, evaluated per version when the asset materializes; ``drift_tests`` and
    ``fence_rules`` are qm.yaml's per-metric drift tests and outlier rules; ``on_predictions``:
    object pixel metrics of predicted objects are configured (``prediction_pixels``)."""
    keys = metric_keys(metric_modules, on_predictions)
    base = _named(  # the wide tables' own columns only: no URLs, hashes, masks or keypoints
        "manifest",
        "annotations",
        "predictions",
        columns={
            "manifest": IMAGE_BASE,
            "annotations": OBJECT_BASE,
            "predictions": PREDICTION_BASE,
        },
    )
    options = evaluation or {}  # score, edges, buckets of sliced_evaluation
    unknown = sorted(set(options.get("edges", {})) - set(keys))
    if unknown:  # a misspelt metric would silently keep its quantile buckets, or get none
        raise QmError(
            f"bucket_edges names no metric: {', '.join(unknown)}; metrics: {', '.join(keys)}"
        )

    def analysis_asset(name: str, **kwargs):
        """The decorator of asset ``analysis/<name>``, with the checks that target it."""
        return dg.asset(
            key=["analysis", name],
            check_specs=_check_specs(checks, f"analysis/{name}"),
            partitions_def=dataset_versions,
            group_name="analysis",
            **kwargs,
        )

    @dg.multi_asset(
        name="quality_tables",
        partitions_def=dataset_versions,
        group_name="analysis",
        ins={
            **base,
            **_named(
                "class_labels",
                "class_predictions",
                columns={"class_predictions": ["model", "image_id", "predicted"]},
            ),
            **_ins(keys),
        },
        outs={
            level: dg.AssetOut(
                key=["analysis", "quality_table", level],
                code_version="1",
                kinds={"python", "pandas"},
                description=f"The wide {level}-level quality table: every metric a column.",
            )
            for level in ("image", "object", "prediction")
        },
    )
    def quality_tables(
        manifest, annotations, predictions, class_labels, class_predictions, **tables
    ):
        """Join every metric of every level into one table per level (images, objects,
        predictions), the table users slice from Python and `qm show`; a classification
        version's images carry their ``class`` and each model's ``predicted@<model>``."""
        frames = _by_key(tables, keys)
        classes = cls.image_columns(class_labels, class_predictions)
        out = {
            "image": image_table(manifest, frames, classes),
            "object": object_table(annotations, frames),
            "prediction": prediction_table(predictions, frames),
        }
        for level, frame in out.items():
            yield dg.Output(
                frame,
                output_name=level,
                metadata={"dagster/row_count": len(frame), "columns": len(frame.columns)},
            )

    @analysis_asset(
        "outliers",
        ins=_named("image_table", "object_table", "prediction_table"),
        code_version="2",
        kinds={"python", "scikitlearn"},
    )
    def analysis_outliers(image_table, object_table, prediction_table):
        """Per metric: values outside its fences (skew-adjusted boxplot by default, Tukey's or
        log-scale per metric; object metrics per class with enough objects too), and per level
        the rows an IsolationForest over all metrics flags. Every metric is read from the
        three wide tables, not from its own asset. Plots tab: ``severe`` and ``outlier share
        <level>`` across versions; ``qm explore`` lists the flagged rows as pictures."""
        frames = metric_frames(keys, image_table, object_table, prediction_table)
        tukey = all_outliers(frames, outlier_rules(keys, fence_rules))
        multi = [
            _multivariate("image", image_table, "image_id", "data/", fence_rules),
            _multivariate("object", object_table, "annotation_id", "label/", fence_rules),
        ]
        frame = pd.concat([tukey, *multi], ignore_index=True)
        counts = frame.groupby(["metric", "severity"]).size().unstack(fill_value=0)
        yield from _checked(checks, "analysis/outliers", frame, len(image_table))
        yield dg.Output(
            frame,
            metadata={
                "dagster/row_count": len(frame),
                "severe": int((frame.severity == "severe").sum()),
                **outlier_shares(frame, {"image": image_table, "object": object_table}),
                "per metric": table_preview(counts.reset_index(), limit=60),
            },
        )

    @analysis_asset(
        "drift",
        ins={
            **_named(
                "image_table",
                "object_table",
                "prediction_table",
                "ref_images",
                "ref_objects",
                "ref_predictions",
            ),
        },
        code_version="3",
        kinds={"python", "scipy"},
    )
    def analysis_drift(
        context: dg.AssetExecutionContext,
        qm: QmResource,
        image_table,
        object_table,
        prediction_table,
        ref_images,
        ref_objects,
        ref_predictions,
    ):
        """This version against its reference (version.json ``reference``, read through the
        reference/* aliases): per metric of every level the test chosen for it (size-aware
        by default, the image as the sampling unit), with Wasserstein/std, PSI and JS; class
        shares; a domain classifier; prediction metrics per model. Plots tab: ``drifted``
        and ``drift share <level>`` across versions."""
        # imported here: scipy.stats and scikit-learn cost every step process 0.7 s otherwise
        from qm_dagster.drift import COLUMNS as DRIFT_COLUMNS
        from qm_dagster.drift import drift_shares, version_drift

        reference = qm.version(context.partition_key).meta().reference
        empty = pd.DataFrame(columns=DRIFT_COLUMNS)
        if not reference:
            yield from _checked(checks, "analysis/drift", empty)
            yield dg.Output(empty, metadata={"reference": "", "note": "no reference version"})
            return
        if ref_images is None or ref_objects is None:
            context.log.warning(
                f"reference {reference!r} has no quality tables yet; drift is empty "
                "until the reference is materialized and this asset re-runs"
            )
            yield from _checked(checks, "analysis/drift", empty)
            yield dg.Output(
                empty, metadata={"reference": reference, "reference materialized": False}
            )
            return
        frame = version_drift(
            {"image": ref_images, "object": ref_objects, "prediction": ref_predictions},
            {"image": image_table, "object": object_table, "prediction": prediction_table},
            drift_tests,
        )
        drifted = frame[frame.verdict == "drift"].metric.tolist()
        yield from _checked(checks, "analysis/drift", frame)
        yield dg.Output(
            frame,
            metadata={
                "reference": reference,
                "drifted": len(drifted),
                **drift_shares(frame),
                "drifted metrics": dg.MetadataValue.md(", ".join(drifted) or "_none_"),
                "PSI per metric": drift_chart(frame),
                "table": table_preview(
                    frame[
                        [
                            "level",
                            "metric",
                            "test",
                            "statistic",
                            "p_value",
                            "threshold",
                            "psi",
                            "wasserstein_std",
                            "verdict",
                        ]
                    ],
                    limit=80,
                ),
            },
        )

    sliced_levels = {s.level for s in slices}
    edges = options.get("edges", {})
    bucketed = {
        level: [m for m in edges if m.startswith(f"{level}/")] for level in ("label", "model")
    }
    members = {  # the quality tables of object / prediction slices: whole only when used
        "object_table": None
        if "object" in sliced_levels
        else ["annotation_id", *bucketed["label"]],
        "prediction_table": None
        if "prediction" in sliced_levels
        else ["model", "prediction_id", *bucketed["model"]],
    }

    @analysis_asset(
        "sliced_evaluation",
        ins={
            **_named(
                "manifest", "annotations", "categories", "predictions", "matches", "image_table"
            ),
            **_named(
                "object_table",
                "prediction_table",
                columns={k: v for k, v in members.items() if v is not None},
            ),
        },
        code_version="5",
        kinds={"python", "numpy"},
    )
    def analysis_sliced_evaluation(
        qm: QmResource,
        manifest,
        annotations,
        categories,
        predictions,
        matches,
        image_table,
        object_table,
        prediction_table,
    ):
        """Per model: COCO's 12 statistics and TP/FP/FN, precision, recall, F1 (at the
        configured score threshold, from model/matching) on the whole version, on each bucket
        of each image metric (quantiles, or configured edges), on each bucket of each object
        or prediction metric given edges (the objects outside ignored / the predictions
        inside alone, as named slices) and on named slices; AP, AR on size buckets of
        object_area. One COCO evaluation per model and IoU type (bbox; segm
        too for a model with masks; keypoints (OKS) when every object and prediction carries
        COCO's 17 keypoints: ``iou_type`` column); slices accumulate its matches. Plots tab:
        ``AP``, ``AP50``, ``AR100`` of each model across versions."""
        named = NamedSlices.of(
            slices,
            {"image": image_table, "object": object_table, "prediction": prediction_table},
            edges,
        )
        frame = sliced_evaluation(
            manifest,
            annotations,
            categories,
            predictions,
            matches,
            image_table,
            named=named,
            workers=qm.workers,
            **options,
        )
        overall = frame[frame.metric == "all"]
        yield from _checked(checks, "analysis/sliced_evaluation", frame)
        yield dg.Output(
            frame,
            metadata={
                "dagster/row_count": len(frame),
                **{
                    f"{stat} {row.model}{'' if row.iou_type == 'bbox' else ' ' + row.iou_type}": (
                        float(getattr(row, stat))
                    )
                    for row in overall.itertuples()
                    for stat in ("AP", "AP50", "AR100")
                },
                "overall": table_preview(
                    overall[["model", "iou_type", *STATS, "precision", "recall", "f1"]]
                ),
                **sliced_charts(frame, CHARTED),
            },
        )

    @analysis_asset(
        "class_evaluation",
        ins=_named(
            "image_table",
            "class_labels",
            "class_predictions",
            columns={"class_predictions": ["model", "image_id", "predicted"]},
        ),
        code_version="1",
        kinds={"python", "numpy"},
    )
    def analysis_class_evaluation(image_table, class_labels, class_predictions):
        """Classification versions, per model: accuracy, macro F1 and per-class recall on the
        whole version, on each bucket of each image metric (the buckets sliced evaluation
        uses) and on each named image slice. Empty for detection versions."""
        named = NamedSlices.of([s for s in slices if s.level == "image"], {"image": image_table})
        classes = sorted(set(class_labels.label) | set(class_predictions.predicted))
        rows = image_slices(
            image_table, named.images, options.get("edges", {}), options.get("buckets", 5)
        )
        frame = cls.class_evaluation(rows, class_labels, class_predictions, classes)
        overall = frame[frame.metric == "all"]
        yield from _checked(checks, "analysis/class_evaluation", frame)
        yield dg.Output(
            frame,
            metadata={
                "dagster/row_count": len(frame),
                **{
                    f"{stat} {row.model}": float(getattr(row, stat))
                    for row in overall.itertuples()
                    for stat in ("accuracy", "macro_f1")
                },
                "overall": table_preview(overall),
                "worst slices": table_preview(
                    frame[frame.n_images > 0].sort_values("accuracy").head(10)
                ),
            },
        )

    @analysis_asset(
        "class_label_issues",
        ins=_named("class_labels", "class_predictions"),
        code_version="1",
        kinds={"python", "pandas"},
    )
    def analysis_class_label_issues(
        context: dg.AssetExecutionContext, qm: QmResource, class_labels, class_predictions
    ):
        """Classification versions, per model: the images cleanlab finds mislabelled
        (confident learning), worst label quality first, with the class the model suggests.
        Empty for detection versions."""
        version = qm.version(context.partition_key)
        classes = cls.version_classes(version) if cls.is_classification(version) else []
        frame = cls.label_issues(class_labels, class_predictions, classes)
        yield from _checked(checks, "analysis/class_label_issues", frame)
        yield dg.Output(
            frame,
            metadata={
                "dagster/row_count": len(frame),
                **{
                    f"label issues {model}": int((frame.model == model).sum())
                    for model in sorted(set(class_predictions.model))
                },
                "top": table_preview(frame, limit=15),
            },
        )

    @analysis_asset(
        "label_errors",
        ins={
            **_named("annotations", "predictions", "matches"),
            "agreement": dg.AssetIn(key=["label", "neighbour_agreement"]),
        },
        code_version="3",
        kinds={"python", "pandas"},
    )
    def analysis_label_errors(annotations, predictions, matches, agreement):
        """A ranked review queue of likely label mistakes — missing, spurious, wrong class, badly
        located — from each model's confident disagreements with the labels, and objects
        whose nearest objects in embedding space vote for another class; with the evidence."""
        frame = (
            label_errors(annotations, predictions, matches, agreement)
            if len(annotations)
            else (pd.DataFrame(columns=LABEL_ERROR_COLUMNS))
        )
        return dg.Output(
            frame,
            metadata={
                "dagster/row_count": len(frame),
                **{f"{k} candidates": int(v) for k, v in frame.kind.value_counts().items()},
                "top of the queue": table_preview(
                    frame[
                        ["kind", "score", "image_id", "category", "predicted_category", "evidence"]
                    ],
                    limit=15,
                ),
            },
        )

    @analysis_asset(
        "annotators",
        ins={
            **_named(
                "annotations",
                "object_table",
                "matches",
                columns={
                    "annotations": ["annotation_id", "image_id", "annotator", "iscrowd"],
                    "object_table": ["annotation_id", *(k for k in keys if k.startswith("label/"))],
                    "matches": ["model", "status", "score", "gt_id"],
                },
            ),
            "errors": dg.AssetIn(
                key=["analysis", "label_errors"], metadata={COLUMNS: ["annotation_id", "kind"]}
            ),
        },
        code_version="1",
        kinds={"python", "pandas"},
    )
    def analysis_annotators(annotations, object_table, matches, errors):
        """Per annotator: objects, images, the mean of each label metric, and the shares of
        their objects labelled twice, in the label-error queue, and found by each model
        (checks can target an annotator)."""
        frame = annotator_table(
            annotations, object_table, errors, matches, options.get("score", 0.5)
        )
        yield from _checked(checks, "analysis/annotators", frame)
        yield dg.Output(
            frame,
            metadata={
                "dagster/row_count": len(frame),
                "annotators": table_preview(frame[[c for c in frame if "/" not in c]]),
            },
        )

    @analysis_asset(
        "metric_importance",
        ins={"prediction_table": dg.AssetIn(key=["analysis", "quality_table", "prediction"])},
        code_version="1",
        kinds={"python", "scikitlearn"},
    )
    def analysis_metric_importance(prediction_table):
        """Per model and metric: Spearman correlation and mutual information with a prediction
        being a true positive: which metrics the model's failures follow."""
        frame = metric_importance(prediction_table)
        return dg.Output(
            frame, metadata={"dagster/row_count": len(frame), "top": table_preview(frame, limit=15)}
        )

    @analysis_asset(
        "report",
        ins={
            **_named(
                "manifest",
                "annotations",
                "image_table",
                "ref_images",
                "ref_manifest",
                columns={"ref_manifest": ["image_id", "url"]},
            ),
            **{name: dg.AssetIn(key=["analysis", name]) for name in REPORT_SECTIONS},
        },
        code_version="3",
        kinds={"python", "html"},
    )
    def analysis_report(
        context: dg.AssetExecutionContext,
        qm: QmResource,
        manifest,
        annotations,
        image_table,
        ref_images,
        ref_manifest,
        **sections,
    ):
        """One self-contained HTML report of the version (histograms with the reference
        overlaid, galleries per metric, outliers, duplicates, drift, sliced evaluation, label-error
        queue with boxes), written through the storage and linked here."""
        from qm_dagster.report import build_report  # matplotlib: imported where it draws

        version = context.partition_key
        meta = qm.version(version).meta()
        page = build_report(
            version,
            {"kind": meta.kind or "", "reference": meta.reference or ""},
            manifest,
            image_table,
            ref_images,
            annotations,
            sections,
            reference_urls=None if ref_manifest is None else ref_manifest.set_index("image_id").url,
            workers=qm.workers,
        )
        url = storage.report_url(qm.storage, version)
        storage.write_bytes_atomic(url, page.encode("utf-8"), "text/html; charset=utf-8")
        link = storage.secret_free_link(url)
        return dg.MaterializeResult(
            metadata={
                "report": dg.MetadataValue.path(url),
                "open report": dg.MetadataValue.url(link)
                if link
                else dg.MetadataValue.md(f"`qm report {version}` prints a signed link"),
                "bytes": len(page),
                "dagster/uri": dg.MetadataValue.path(url),
            }
        )

    return [
        quality_tables,
        analysis_outliers,
        analysis_drift,
        analysis_sliced_evaluation,
        analysis_label_errors,
        analysis_class_evaluation,
        analysis_class_label_issues,
        analysis_annotators,
        analysis_metric_importance,
        analysis_report,
    ]


def _check_specs(checks: tuple[Check, ...], key: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(c.name, asset=key.split("/"), description=c.description or _describe(c))
        for c in checks
        if c.asset_key == key
    ]


def _describe(c: Check) -> str:
    if c.target == "drift":
        return f"no drift on {c.metric} against the reference"
    targets = {
        "sliced_evaluation": f"{c.model} on {c.metric or 'all'} bucket {c.bucket}",
        "annotators": f"annotator {c.annotator}" if c.annotator else "every annotator",
    }
    return f"{c.stat} of {targets.get(c.target, 'images')} {c.op} {c.value} ({c.severity})"


def _checked(checks: tuple[Check, ...], key: str, frame: pd.DataFrame, images: int | None = None):
    """The results of the checks on ``key``, evaluated on this version's table."""
    for c in (c for c in checks if c.asset_key == key):
        outcome = evaluate_check(c, frame, images)
        yield dg.AssetCheckResult(
            check_name=c.name,
            asset_key=key.split("/"),
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity[c.severity],
            metadata={
                "measured": dg.MetadataValue.text(outcome.text),
                **({"value": float(outcome.measured)} if outcome.measured is not None else {}),
            },
        )


def _multivariate(
    level: str, table: pd.DataFrame, key: str, prefix: str, fence_rules: tuple
) -> pd.DataFrame:
    columns = [c for c in table.columns if c.startswith(prefix) and ":" not in c and "@" not in c]
    scores = multivariate_scores(table, columns, outlier_rules(columns, fence_rules))
    hit = scores.flagged.to_numpy()
    return pd.DataFrame(
        {
            "level": level,
            "metric": "isolation_forest",
            "scope": "all",
            "key": table[key].to_numpy()[hit],
            "image_id": table.image_id.to_numpy()[hit],
            "value": scores.score.to_numpy()[hit],
            "severity": scores.severity.to_numpy()[hit],
        }
    )
