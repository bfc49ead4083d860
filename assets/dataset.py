"""``dataset/manifest``, ``dataset/data_issues`` and ``dataset/annotations`` for one version."""

import time

import dagster as dg

from assets.metadata import table_preview
from assets.partitions import dataset_versions
from qm_dagster import storage
from qm_dagster.coco import empty_annotations, empty_categories
from qm_dagster.manifest import write_manifest
from qm_dagster.storage import StoredTable
from qm_dagster.watch import version_signature
from resources.dataset import QmResource

CODE_VERSION = "2"  # 2: content ids by BLAKE3
SIGNATURE_LABEL = "version.json signature"  # read back by new_versions_sensor


@dg.multi_asset(
    name="dataset_manifest",
    partitions_def=dataset_versions,
    group_name="dataset",
    can_subset=True,
    outs={
        "manifest": dg.AssetOut(
            key=["dataset", "manifest"],
            description="One row per image: id, file, URL, bytes, content hash, width, height "
            "(from the header), video/frame, and whether it can be measured.",
            code_version=CODE_VERSION,
            kinds={"python", "parquet"},
            is_required=False,
        ),
        "data_issues": dg.AssetOut(
            key=["dataset", "data_issues"],
            description="Files that could not be measured (missing, empty, not an image, "
            "truncated, above the pixel limit) and header/annotation mismatches.",
            code_version=CODE_VERSION,
            kinds={"python", "parquet"},
            is_required=False,
        ),
        "categories": dg.AssetOut(
            key=["dataset", "categories"],
            description="The version's categories: id, name, supercategory.",
            code_version=CODE_VERSION,
            kinds={"python", "parquet"},
            is_required=False,
        ),
        "annotations": dg.AssetOut(
            key=["dataset", "annotations"],
            description="The version's validated COCO annotations, one row per object "
            "(empty for unlabeled versions).",
            code_version=CODE_VERSION,
            kinds={"python", "parquet"},
            is_required=False,
        ),
    },
)
def dataset_manifest(context: dg.AssetExecutionContext, qm: QmResource):
    """Validate annotations.json and read every image's header and content hash."""
    start = time.perf_counter()
    version = qm.version(context.partition_key)
    signature = version_signature(version)  # before reading: a later re-upload must look new
    coco = version.instances(strict=qm.strict_annotations)
    key = context.partition_key
    images_url = storage.asset_url(qm.storage, "dataset/manifest", key)
    issues_url = storage.asset_url(qm.storage, "dataset/data_issues", key)
    summary = write_manifest(
        version,
        qm.max_pixels,
        images_url,
        issues_url,
        threads=4 * max(1, qm.workers),
        table=coco.images if coco is not None else None,
        workers=qm.workers,
        quarantined=[*(coco.quarantined if coco is not None else ()), *version.import_issues()],
    )
    seconds = time.perf_counter() - start
    selected = {key.path[-1] for key in context.selected_asset_keys}
    outputs = {}
    outputs["manifest"] = dg.Output(
        StoredTable(images_url, summary.rows),
        output_name="manifest",
        metadata={
            "dagster/row_count": summary.rows,
            "measurable images": summary.measurable,
            "skipped files": summary.skipped,
            "quarantined records": len(coco.quarantined) if coco is not None else 0,
            "total bytes": summary.total_bytes,
            "kind": version.meta().kind or "",
            SIGNATURE_LABEL: signature or "",
            "seconds": round(seconds, 3),
        },
    )
    outputs["data_issues"] = dg.Output(
        StoredTable(issues_url),
        output_name="data_issues",
        metadata={
            "dagster/row_count": summary.errors + summary.warnings + summary.skipped,
            "errors": summary.errors,
            "warnings": summary.warnings,
            "issues": table_preview(summary.preview),
        },
    )
    annotations = coco.annotations if coco is not None else empty_annotations()
    outputs["annotations"] = dg.Output(
        annotations,
        output_name="annotations",
        metadata={
            "dagster/row_count": len(annotations),
            "categories": len(coco.categories) if coco is not None else 0,
        },
    )
    categories = coco.categories if coco is not None else empty_categories()
    outputs["categories"] = dg.Output(
        categories, output_name="categories", metadata={"dagster/row_count": len(categories)}
    )
    for name, output in outputs.items():
        if name in selected:
            yield output
