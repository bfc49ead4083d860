"""Analysis assets over every metric of every level: the wide quality tables and the outliers."""

import dagster as dg
import pandas as pd

from assets.metadata import table_preview
from assets.partitions import dataset_versions
from qm_dagster.metrics.registry import metrics
from qm_dagster.outliers import all_outliers, multivariate_scores
from qm_dagster.quality_table import image_table, object_table, prediction_table

EXTRA_METRIC_ASSETS = ("data/uniqueness",)


def metric_keys(metric_modules: tuple[str, ...]) -> list[str]:
    """Asset keys of every metric table (built-in and configured custom ones)."""
    return sorted({s.asset_key for s in metrics(None, metric_modules)} | set(EXTRA_METRIC_ASSETS))


def _ins(keys: list[str]) -> dict[str, dg.AssetIn]:
    return {k.replace("/", "__"): dg.AssetIn(key=k.split("/")) for k in keys}


def _by_key(inputs: dict[str, pd.DataFrame], keys: list[str]) -> dict[str, pd.DataFrame]:
    return {k: inputs[k.replace("/", "__")] for k in keys}


def build_analysis_assets(metric_modules: tuple[str, ...] = ()) -> list[dg.AssetsDefinition]:
    keys = metric_keys(metric_modules)
    base = {
        "manifest": dg.AssetIn(key=["dataset", "manifest"]),
        "annotations": dg.AssetIn(key=["dataset", "annotations"]),
        "predictions": dg.AssetIn(key=["dataset", "predictions"]),
    }

    @dg.multi_asset(
        name="quality_tables",
        partitions_def=dataset_versions,
        group_name="analysis",
        ins={**base, **_ins(keys)},
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
    def quality_tables(manifest, annotations, predictions, **tables):
        """Join every metric of every level into one table per level (images, objects,
        predictions), the table users slice from Python and `qm show`."""
        frames = _by_key(tables, keys)
        out = {
            "image": image_table(manifest, frames),
            "object": object_table(annotations, frames),
            "prediction": prediction_table(predictions, frames),
        }
        for level, frame in out.items():
            yield dg.Output(
                frame,
                output_name=level,
                metadata={"dagster/row_count": len(frame), "columns": len(frame.columns)},
            )

    @dg.asset(
        key=["analysis", "outliers"],
        partitions_def=dataset_versions,
        group_name="analysis",
        ins={
            **_ins(keys),
            "image_table": dg.AssetIn(key=["analysis", "quality_table", "image"]),
            "object_table": dg.AssetIn(key=["analysis", "quality_table", "object"]),
        },
        code_version="1",
        kinds={"python", "scikitlearn"},
    )
    def analysis_outliers(image_table, object_table, **tables):
        """Per metric: values outside Tukey's fences (moderate 1.5 IQR, severe 3 IQR; object
        metrics per class too), and per level the rows an IsolationForest over all metrics flags."""
        tukey = all_outliers(_by_key(tables, keys))
        multi = [
            _multivariate("image", image_table, "image_id", "data/"),
            _multivariate("object", object_table, "annotation_id", "label/"),
        ]
        frame = pd.concat([tukey, *multi], ignore_index=True)
        counts = frame.groupby(["metric", "severity"]).size().unstack(fill_value=0)
        return dg.Output(
            frame,
            metadata={
                "dagster/row_count": len(frame),
                "severe": int((frame.severity == "severe").sum()),
                "per metric": table_preview(counts.reset_index(), limit=60),
            },
        )

    return [quality_tables, analysis_outliers]


def _multivariate(level: str, table: pd.DataFrame, key: str, prefix: str) -> pd.DataFrame:
    columns = [c for c in table.columns if c.startswith(prefix) and ":" not in c and "@" not in c]
    scores = multivariate_scores(table, columns)
    hit = scores.flagged.to_numpy()
    return pd.DataFrame(
        {
            "level": level,
            "metric": "isolation_forest",
            "scope": "all",
            "key": table[key].to_numpy()[hit],
            "image_id": table.image_id.to_numpy()[hit],
            "value": scores.score.to_numpy()[hit],
            "severity": "moderate",
        }
    )
