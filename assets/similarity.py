"""Metrics from the embeddings (uniqueness, diversity, neighbour agreement) and duplicate
groups, from the embeddings and content hashes."""

import dagster as dg
import numpy as np
import pandas as pd

from assets.metadata import table_preview, value_summary
from assets.partitions import dataset_versions
from assets.reference import reference_key
from qm_dagster.embedding_metrics import (
    AGREEMENT_NEIGHBOURS,
    diversity,
    diversity_clusters,
    neighbour_agreement,
)
from qm_dagster.similarity import EmbeddingSet, duplicate_groups, list_vectors, uniqueness
from qm_dagster.storage import StoredTable, read_table
from resources.dataset import QmResource
from resources.io_manager import COLUMNS, LAZY


def _embedding_metric(key: str, level: str, ins: dict, kind: str, code_version: str = "1"):
    """The asset decorator of a metric table computed from embeddings (``key`` like
    ``data/uniqueness``), tagged as the registry's metrics are."""
    return dg.asset(
        key=key.split("/"),
        partitions_def=dataset_versions,
        group_name=key.split("/")[0],
        ins=ins,
        code_version=code_version,
        kinds={"python", kind},
        tags={"qm/level": level, "qm/reads": "embeddings", "qm/origin": "builtin"},
    )


IMAGE_VECTORS = {"embeddings": dg.AssetIn(key=["data", "embeddings"], metadata={LAZY: True})}


@_embedding_metric("data/uniqueness", "image", IMAGE_VECTORS, "faiss", code_version="2")
def data_uniqueness(context: dg.AssetExecutionContext, embeddings: StoredTable):
    """Distance from each image's embedding to its nearest other image in the version
    (0 = exact duplicate; exact search up to 20k images, a faiss index re-ranked exactly above).
    Reads the vectors only, never the crop hashes."""
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
    aliases). Vectors and hashes are read whole, crop hashes only for the rows the crop check
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


def build_embedding_metric_assets(
    clusters: int = 0, seed: int = 0, neighbours: int = AGREEMENT_NEIGHBOURS
) -> list[dg.AssetsDefinition]:
    """``data/diversity`` and ``label/neighbour_agreement`` (``qm_dagster.embedding_metrics``)
    with qm.yaml's ``diversity_clusters`` (0: the number of classes, else 10), ``diversity_seed``
    and ``agreement_neighbours``."""

    @_embedding_metric(
        "data/diversity",
        "image",
        {**IMAGE_VECTORS, "categories": dg.AssetIn(key=["dataset", "categories"])},
        "scikit-learn",
    )
    def data_diversity(
        context: dg.AssetExecutionContext, embeddings: StoredTable, categories: pd.DataFrame
    ):
        """Encord Active's image diversity: k-means clusters of the embeddings, each image's
        distance to its centroid, and a cluster-balanced rank of what to label first
        (``value`` = rank / (n - 1), 0 = first)."""
        emb = EmbeddingSet.read([(context.partition_key, embeddings.url)])
        k = diversity_clusters(clusters, len(categories))
        frame = diversity(emb.vectors, k, seed)
        frame.insert(0, "image_id", emb.image_id)
        meta = {**value_summary(frame), "clusters": k, "seed": seed}
        return dg.Output(frame, metadata=meta)

    @_embedding_metric(
        "label/neighbour_agreement",
        "object",
        {
            "object_embeddings": dg.AssetIn(key=["label", "embeddings"], metadata={LAZY: True}),
            "annotations": dg.AssetIn(
                key=["dataset", "annotations"],
                metadata={COLUMNS: ["annotation_id", "category_id"]},
            ),
        },
        "faiss",
    )
    def label_neighbour_agreement(object_embeddings: StoredTable, annotations: pd.DataFrame):
        """Encord Active's object annotation quality: the share of an object's nearest objects
        in embedding space (its box crop's) that carry its class; low = suspected label
        error. Vectors are read as one float32 array, never as Python lists."""
        classes = annotations.set_index("annotation_id").category_id
        table = read_table(object_embeddings.url, ["annotation_id", "image_id", "vector"])
        frame = table.select(["annotation_id", "image_id"]).to_pandas()
        vectors = list_vectors(table.column("vector"))
        votes = neighbour_agreement(
            vectors, classes.reindex(frame.annotation_id).to_numpy(), neighbours
        )
        frame = pd.concat([frame, votes], axis=1)
        meta = {**value_summary(frame), "neighbours": neighbours}
        return dg.Output(frame, metadata=meta)

    @_embedding_metric(
        "label/class_neighbour_agreement",
        "image",
        {
            **IMAGE_VECTORS,
            "labels": dg.AssetIn(key=["dataset", "classifications"]),
        },
        "faiss",
    )
    def label_class_neighbour_agreement(
        context: dg.AssetExecutionContext, embeddings: StoredTable, labels: pd.DataFrame
    ):
        """A classification version's neighbour agreement: the share of a labelled image's
        nearest labelled images (image embeddings) that carry its label, and the most common
        other label among them; low = suspected label error. Empty for detection versions."""
        if labels.empty:
            return dg.Output(
                pd.DataFrame({"image_id": [], "value": [], "other_class": [], "other_share": []}),
                metadata={"dagster/row_count": 0},
            )
        emb = EmbeddingSet.read([(context.partition_key, embeddings.url)])
        label = labels.set_index("image_id").label.reindex(emb.image_id)
        kept = label.notna().to_numpy()
        names = np.array(sorted(set(labels.label)), dtype=object)
        codes = np.searchsorted(names, label[kept].to_numpy())
        votes = neighbour_agreement(emb.vectors[kept], codes, neighbours)
        other = np.where(votes.other_class >= 0, names[np.maximum(votes.other_class, 0)], None)
        frame = pd.DataFrame(
            {
                "image_id": np.asarray(emb.image_id)[kept],
                "value": votes.value.to_numpy(),
                "other_class": other,
                "other_share": votes.other_share.to_numpy(),
            }
        )
        meta = {**value_summary(frame), "neighbours": neighbours}
        return dg.Output(frame, metadata=meta)

    return [data_diversity, label_neighbour_agreement, label_class_neighbour_agreement]
