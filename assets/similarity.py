"""Uniqueness and duplicate groups, from the embeddings and content hashes."""

import dagster as dg
import pandas as pd

from assets.metadata import table_preview, value_summary
from assets.partitions import dataset_versions
from assets.reference import reference_key
from qm_dagster.similarity import EmbeddingSet, duplicate_groups, uniqueness
from qm_dagster.storage import StoredTable
from resources.dataset import QmResource
from resources.io_manager import LAZY


@dg.asset(
    key=["data", "uniqueness"],
    partitions_def=dataset_versions,
    group_name="data",
    ins={"embeddings": dg.AssetIn(key=["data", "embeddings"], metadata={LAZY: True})},
    code_version="2",
    kinds={"python", "faiss"},
    tags={"qm/level": "image", "qm/reads": "embeddings", "qm/origin": "builtin"},
)
def data_uniqueness(context: dg.AssetExecutionContext, embeddings: StoredTable):
    """Distance from each image's embedding to its nearest other image in the version
    (0 = exact duplicate; exact search up to 20k images, a faiss index re-ranked exactly above).
    Reads the vectors only, never the thumbnails."""
    emb = EmbeddingSet.read([(context.partition_key, embeddings.url)])
    frame = pd.DataFrame({"image_id": emb.image_id, "value": uniqueness(emb)})
    return dg.Output(frame, metadata=value_summary(frame))


@dg.asset(
    key=["analysis", "duplicates"],
    partitions_def=dataset_versions,
    group_name="analysis",
    ins={
        "manifest": dg.AssetIn(key=["dataset", "manifest"]),
        "embeddings": dg.AssetIn(key=["data", "embeddings"], metadata={LAZY: True}),
        "ref_manifest": dg.AssetIn(key=reference_key(("dataset", "manifest"))),
        "ref_embeddings": dg.AssetIn(
            key=reference_key(("data", "embeddings")), metadata={LAZY: True}
        ),
    },
    code_version="3",
    kinds={"python", "faiss"},
)
def analysis_duplicates(
    context: dg.AssetExecutionContext,
    qm: QmResource,
    manifest,
    embeddings: StoredTable,
    ref_manifest,
    ref_embeddings: StoredTable | None,
):
    """Groups of exact (same content hash) and near duplicates (perceptual hash or embedding
    distance) within the version and against its reference version (through the reference/*
    aliases). Vectors and hashes are read whole, thumbnails only for the rows the crop check
    asks for."""
    version = context.partition_key
    images = [manifest.assign(version=version)]
    sources = [(version, embeddings.url)]
    reference = qm.version(version).meta().reference
    if reference:
        if ref_manifest is None or ref_embeddings is None:
            context.log.warning(f"reference {reference!r} has no stored manifest/embeddings yet")
        else:
            images.append(ref_manifest.assign(version=reference))
            sources.append((reference, ref_embeddings.url))
    columns = ["version", "image_id", "file_name", "content_hash"]
    groups = duplicate_groups(
        pd.concat([i[columns] for i in images], ignore_index=True), EmbeddingSet.read(sources)
    )
    involving = groups[groups.group.isin(groups[groups.version == version].group)]
    return dg.Output(
        involving,
        metadata={
            "dagster/row_count": len(involving),
            "groups": int(involving.group.nunique()),
            "exact groups": int(involving[involving.kind == "exact"].group.nunique()),
            "near groups": int(involving[involving.kind == "near"].group.nunique()),
            "reference": reference or "",
            "groups preview": table_preview(involving),
        },
    )
