"""Classification versions in the graph: the labels and class probabilities
(``dataset/classifications``, ``dataset/class_predictions``) and the per-image metric tables
made from them (``classification.METRICS``). Empty for detection versions."""

import dagster as dg

from assets.metadata import value_summary
from assets.partitions import dataset_versions
from qm_dagster import classification as cls
from resources.dataset import QmResource
from resources.io_manager import COLUMNS

GROUPS = {"label": "label", "model": "model"}  # as the registry's metrics


@dg.multi_asset(
    name="classification_inputs",
    partitions_def=dataset_versions,
    group_name="dataset",
    can_subset=True,
    ins={"manifest": dg.AssetIn(key=["dataset", "manifest"], metadata={COLUMNS: ["image_id"]})},
    outs={
        "classifications": dg.AssetOut(
            key=["dataset", "classifications"],
            description="A classification version's labels (classifications.csv): "
            "image_id, label. Empty for detection versions.",
            code_version="1",
            kinds={"python", "pandas"},
            is_required=False,
        ),
        "class_predictions": dg.AssetOut(
            key=["dataset", "class_predictions"],
            description="Every model's class probabilities of a classification version "
            "(predictions/<model>.csv|.parquet|.json): model, image_id, predicted, score, "
            "probs (in the order of version.json's classes). Empty for detection versions.",
            code_version="1",
            kinds={"python", "pandas"},
            is_required=False,
        ),
    },
)
def classification_inputs(context: dg.AssetExecutionContext, qm: QmResource, manifest):
    """Read and validate the labels and class probabilities of a classification version;
    rows naming a file that is not one of its images are left out and counted."""
    version = qm.version(context.partition_key)
    selected = {key.path[-1] for key in context.selected_asset_keys}
    task = cls.is_classification(version)
    classes = cls.version_classes(version) if task else []
    if "classifications" in selected:
        labels, orphans = (
            cls.read_labels(version, manifest.image_id) if task else (cls.empty_labels(), [])
        )
        yield dg.Output(
            labels,
            output_name="classifications",
            metadata={
                "dagster/row_count": len(labels),
                "classes": len(classes),
                "labels without an image": len(orphans),
                "first of them": ", ".join(orphans[:5]),
            },
        )
    if "class_predictions" in selected:  # alone when new probability files land
        predictions, stray = (
            cls.read_predictions(version, manifest.image_id)
            if task
            else (cls.empty_predictions(), {})
        )
        yield dg.Output(
            predictions,
            output_name="class_predictions",
            metadata={
                "dagster/row_count": len(predictions),
                "models": ", ".join(sorted(set(predictions.model))),
                **{f"rows without an image {m}": n for m, n in stray.items()},
            },
        )


def _metric_out(key: str) -> dg.AssetOut:
    prefix = key.split("/")[0]
    return dg.AssetOut(
        key=key.split("/"),
        group_name=GROUPS[prefix],
        description=cls.METRICS[key] + " (classification versions)",
        is_required=False,
        code_version="1",
        kinds={"python", "numpy"},
        tags={"qm/level": "image", "qm/task": cls.TASK},
    )


@dg.multi_asset(
    name="classification_tables",
    partitions_def=dataset_versions,
    can_subset=True,
    ins={
        "labels": dg.AssetIn(key=["dataset", "classifications"]),
        "predictions": dg.AssetIn(key=["dataset", "class_predictions"]),
    },
    outs={key.replace("/", "__"): _metric_out(key) for key in cls.METRICS},
)
def classification_tables(context: dg.AssetExecutionContext, qm: QmResource, labels, predictions):
    """Per image: the label's class share; per model: confidence, margin, entropy,
    correctness and cleanlab's label quality."""
    version = qm.version(context.partition_key)
    classes = cls.version_classes(version) if cls.is_classification(version) else []
    frames = {"label/class_share": cls.label_share(labels)}
    frames.update(cls.model_metrics(labels, predictions, classes))
    selected = {"/".join(k.path) for k in context.selected_asset_keys}
    for key, frame in frames.items():
        if key in selected:
            yield dg.Output(
                frame, output_name=key.replace("/", "__"), metadata=value_summary(frame)
            )
