"""Metrics read from tables, no pixels: label/sequence metrics and object counts (one multi-asset),
model metrics for every model after one COCO matching each (another); and the predictions table."""

import dagster as dg
import pandas as pd

from assets.image_metrics import metric_out
from assets.metadata import table_preview, value_summary
from assets.partitions import dataset_versions
from qm_dagster.coco import empty_predictions
from qm_dagster.manifest import quarantine_issues
from qm_dagster.matching import matching
from qm_dagster.metrics.registry import metrics
from qm_dagster.table_pass import model_metrics, table_metrics
from qm_dagster.watch import prediction_signatures
from resources.dataset import QmResource
from resources.io_manager import COLUMNS

PREDICTION_FILES_LABEL = "prediction files"  # read back by new_predictions_sensor


def _outs(specs):
    return {s.asset_key.replace("/", "__"): metric_out(s) for s in specs}


def build_label_metrics_asset(metric_modules: tuple[str, ...] = ()) -> dg.AssetsDefinition:
    """Image- and object-level metrics computed from the annotation table."""
    specs = [
        s
        for s in metrics(None, metric_modules)
        if s.level in ("image", "object") and s.reads == "table"
    ]
    by_out = dict(zip(_outs(specs), specs, strict=True))

    @dg.multi_asset(
        name="label_tables",
        partitions_def=dataset_versions,
        can_subset=True,
        ins={
            "manifest": dg.AssetIn(key=["dataset", "manifest"]),
            "annotations": dg.AssetIn(key=["dataset", "annotations"]),
        },
        outs=_outs(specs),
    )
    def label_tables(context: dg.AssetExecutionContext, manifest, annotations):
        """Label, sequence and object-count metrics from the annotations (no image decode)."""
        selected = {"/".join(k.path) for k in context.selected_asset_keys}
        chosen = [s for s in by_out.values() if s.asset_key in selected]
        for key, frame in table_metrics(chosen, manifest, annotations).items():
            yield dg.Output(
                frame, output_name=key.replace("/", "__"), metadata=value_summary(frame)
            )

    return label_tables


@dg.asset(
    key=["dataset", "predictions"],
    partitions_def=dataset_versions,
    group_name="dataset",
    ins={
        "manifest": dg.AssetIn(key=["dataset", "manifest"], metadata={COLUMNS: ["image_id"]}),
        "categories": dg.AssetIn(key=["dataset", "categories"]),
    },
    code_version="2",
    kinds={"python", "parquet"},
)
def dataset_predictions(
    context: dg.AssetExecutionContext, qm: QmResource, manifest, categories
) -> dg.Output:
    """Every model's predictions (predictions/<model>.json), validated against the version's
    images and categories (the stored manifest and categories: annotations.json is not parsed
    again), one row per prediction with a ``model`` column."""
    version = qm.version(context.partition_key)
    signatures = prediction_signatures(version)  # before reading: a later change must look new
    image_ids = manifest.image_id if version.has_annotations() else None
    quarantined: list | None = None if qm.strict_annotations else []
    frames = [
        version.predictions(
            model, image_ids=image_ids, categories=categories, quarantined=quarantined
        )
        for model in sorted(version.prediction_files())
    ]
    frame = pd.concat(frames, ignore_index=True) if frames else empty_predictions()
    counts = frame.groupby("model").size().to_dict() if len(frame) else {}
    left_out = quarantine_issues(quarantined or [])
    for row in left_out.head(5).itertuples():
        context.log.warning(f"prediction left out: {row.file_name} at {row.reason}")
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "models": dg.MetadataValue.json(counts),
            "quarantined predictions": len(left_out),
            "left out": table_preview(left_out[["file_name", "reason"]]),
            PREDICTION_FILES_LABEL: dg.MetadataValue.json(signatures),
        },
    )


MATCHING_KEY = ["model", "matching"]


@dg.asset(
    key=MATCHING_KEY,
    partitions_def=dataset_versions,
    group_name="model",
    ins={
        "manifest": dg.AssetIn(key=["dataset", "manifest"]),
        "annotations": dg.AssetIn(key=["dataset", "annotations"]),
        "categories": dg.AssetIn(key=["dataset", "categories"]),
        "predictions": dg.AssetIn(key=["dataset", "predictions"]),
    },
    code_version="1",
    kinds={"python", "numpy"},
)
def model_matching(manifest, annotations, categories, predictions):
    """Each model's predictions matched to the ground truth once (COCO's greedy matching at IoU
    0.5, area all, maxDets 100; qm_dagster.boxeval): status tp / fp / ignored / not_evaluated,
    the matched object and the IoU. Model metrics, sliced evaluation and label errors read it."""
    frame = matching(manifest, annotations, categories, predictions)
    shares = {
        f"{model} tp share": float((rows.status == "tp").mean())
        for model, rows in frame.groupby("model")
    }
    return dg.Output(frame, metadata={"dagster/row_count": len(frame), **shares})


def build_model_metrics_asset(metric_modules: tuple[str, ...] = ()) -> dg.AssetsDefinition:
    """Prediction-level metrics of every model: reads tables only, so new predictions never
    re-decode an image."""
    specs = [s for s in metrics("prediction", metric_modules)]
    by_out = dict(zip(_outs(specs), specs, strict=True))

    @dg.multi_asset(
        name="model_tables",
        partitions_def=dataset_versions,
        can_subset=True,
        ins={
            "manifest": dg.AssetIn(key=["dataset", "manifest"]),
            "annotations": dg.AssetIn(key=["dataset", "annotations"]),
            "predictions": dg.AssetIn(key=["dataset", "predictions"]),
            "matches": dg.AssetIn(key=MATCHING_KEY),
        },
        outs=_outs(specs),
    )
    def model_tables(
        context: dg.AssetExecutionContext, manifest, annotations, predictions, matches
    ):
        """Every selected prediction-level metric, each prediction read with its row of
        model/matching."""
        selected = {"/".join(k.path) for k in context.selected_asset_keys}
        chosen = [s for s in by_out.values() if s.asset_key in selected]
        tables = model_metrics(chosen, manifest, annotations, predictions, matches)
        for key, frame in tables.items():
            yield dg.Output(
                frame, output_name=key.replace("/", "__"), metadata=value_summary(frame)
            )

    return model_tables
