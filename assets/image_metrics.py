"""Every pixel metric (image and object level) as its own asset, plus the embeddings, all fed by
one decode per image.

One subsettable multi-asset over the registry: materializing ``data/brightness`` alone computes
only brightness; materializing all of them decodes each image once.
"""

import dagster as dg

from assets.metadata import value_summary
from assets.partitions import dataset_versions
from qm_dagster.embedding_providers import is_function, precomputed
from qm_dagster.image_pass import measure_images
from qm_dagster.metrics.registry import MetricSpec, metrics
from resources.dataset import QmResource

ENGINE_VERSION = "2"
GROUPS = {"image": "data", "object": "label", "prediction": "model"}


def metric_out(spec: MetricSpec, engine_version: str = ENGINE_VERSION) -> dg.AssetOut:
    """The AssetOut of one metric: key ``<level prefix>/<name>``, described and tagged."""
    lo, hi = spec.value_range
    pixels = spec.reads_pixels
    return dg.AssetOut(
        key=spec.asset_key.split("/"),
        group_name=GROUPS[spec.level],
        description=spec.description,
        is_required=False,
        code_version=f"{engine_version}.{spec.code_version}",
        kinds={"python", "opencv"} if pixels else {"python", "pandas"},
        tags={
            "qm/level": spec.level,
            "qm/reads": spec.reads,
            "qm/origin": "builtin" if spec.builtin else "custom",
        },
        metadata={
            "range": f"[{'' if lo is None else lo}, {'' if hi is None else hi}]",
            "unit": spec.unit,
            "row": spec.index,
        },
    )


EMBEDDING_OUTS = {
    "embeddings": dg.AssetOut(
        key=["data", "embeddings"],
        group_name="data",
        is_required=False,
        code_version=ENGINE_VERSION,
        description="Per image: a deterministic feature vector (colour histogram, low-frequency "
        "DCT, gradient orientations, channel statistics; unit norm) and a 64-bit perceptual hash.",
        kinds={"python", "opencv"},
    ),
    "object_embeddings": dg.AssetOut(
        key=["label", "embeddings"],
        group_name="label",
        is_required=False,
        code_version=ENGINE_VERSION,
        description="The same feature vector for each annotated object's box crop.",
        kinds={"python", "opencv"},
    ),
}


def pixel_specs(metric_modules: tuple[str, ...]) -> dict[str, MetricSpec]:
    """Metrics computed in the image pass, by output name (``<level>__<name>`` for objects)."""
    specs = [
        s
        for s in metrics(None, metric_modules)
        if s.level in ("image", "object") and (s.reads_pixels or s.reads == "header")
    ]
    return {s.name if s.level == "image" else f"object__{s.name}": s for s in specs}


def build_image_metrics_asset(metric_modules: tuple[str, ...] = ()) -> dg.AssetsDefinition:
    """The image-pass multi-asset over the built-in pixel metrics and those of ``metric_modules``."""
    specs = pixel_specs(metric_modules)

    @dg.multi_asset(
        name="image_pass",
        partitions_def=dataset_versions,
        can_subset=True,
        ins={
            "manifest": dg.AssetIn(key=["dataset", "manifest"]),
            "annotations": dg.AssetIn(key=["dataset", "annotations"]),
        },
        outs={**{name: metric_out(spec) for name, spec in specs.items()}, **EMBEDDING_OUTS},
    )
    def image_pass(context: dg.AssetExecutionContext, qm: QmResource, manifest, annotations):
        """Decode each measurable image once; compute every selected image and object metric and
        the embeddings on it."""
        selected = {"/".join(k.path) for k in context.selected_asset_keys}
        chosen = {n: s for n, s in specs.items() if s.asset_key in selected}
        result = measure_images(
            manifest,
            list(chosen.values()),
            workers=qm.workers,
            chunk_size=qm.chunk_size,
            annotations=annotations,
            embeddings="data/embeddings" in selected,
            object_embeddings="label/embeddings" in selected,
            embedder=qm.embedding_provider if is_function(qm.embedding_provider) else "",
        )
        if (
            qm.embedding_provider
            and not is_function(qm.embedding_provider)
            and ("data/embeddings" in selected)
        ):
            names = manifest.set_index("image_id").file_name.reindex(result.embeddings.image_id)
            result.embeddings["vector"] = precomputed(
                qm.embedding_provider, context.partition_key, names.to_frame()
            )
        context.log.info(
            f"{len(chosen)} metrics on {len(manifest)} images: {result.decoded} decoded in "
            f"{result.seconds:.1f}s, {len(result.failures)} failures"
        )
        common = {
            "images decoded": dg.MetadataValue.int(result.decoded),
            "seconds (whole pass)": dg.MetadataValue.float(round(result.seconds, 3)),
        }
        for name, spec in chosen.items():
            frame = result.values[spec.name]
            stages = ["read", "decode", f"metric:{spec.name}"]
            failed = result.failures[result.failures.stage.str.split(" ").str[0].isin(stages)]
            meta = {**value_summary(frame), **common, "failures": dg.MetadataValue.int(len(failed))}
            yield dg.Output(frame, output_name=name, metadata=meta)
        if "data/embeddings" in selected:
            yield dg.Output(
                result.embeddings,
                output_name="embeddings",
                metadata={"dagster/row_count": len(result.embeddings), **common},
            )
        if "label/embeddings" in selected:
            yield dg.Output(
                result.object_embeddings,
                output_name="object_embeddings",
                metadata={"dagster/row_count": len(result.object_embeddings), **common},
            )

    return image_pass
