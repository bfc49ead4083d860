"""Every pixel metric (image and object level) as its own asset, plus the embeddings, all fed by
one decode per image.

One subsettable multi-asset over the registry: materializing ``data/brightness`` alone computes
only brightness; materializing all of them decodes each image once.
"""

import dagster as dg

from assets.metadata import value_summary
from assets.partitions import dataset_versions
from qm_dagster import storage
from qm_dagster.embedding_providers import is_function, precomputed
from qm_dagster.metrics.registry import MetricSpec, metrics
from qm_dagster.passes.backends import backend_for
from qm_dagster.passes.image_pass import (
    EMBEDDINGS,
    ENGINE_VERSION,
    OBJECT_EMBEDDINGS,
    THUMB_CODE,
    Predicted,
    measure_images,
)
from qm_dagster.storage import StoredTable
from resources.dataset import QmResource
from resources.io_manager import LAZY

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
        code_version=THUMB_CODE,
        description="Per image: a deterministic feature vector (colour histogram, low-frequency "
        "DCT, gradient orientations, channel statistics; unit norm), a 64-bit perceptual hash "
        "and the 256 hashes of its crops by up to 9% a side (crop-tolerant near duplicates).",
        kinds={"python", "opencv"},
    ),
    "object_embeddings": dg.AssetOut(
        key=["label", "embeddings"],
        group_name="label",
        is_required=False,
        code_version=THUMB_CODE,
        description="The same feature vector for each annotated object's box crop.",
        kinds={"python", "opencv"},
    ),
}


def pixel_specs(
    metric_modules: tuple[str, ...], on_predictions: bool = False
) -> dict[str, MetricSpec]:
    """Metrics computed in the image pass, by output name (``<level>__<name>`` for objects and
    predicted objects); object metrics on predictions only when ``on_predictions``."""
    specs = [
        s
        for s in metrics(None, metric_modules, on_predictions)
        if s.reads_pixels or s.reads == "header"
    ]
    prefix = {"image": "", "object": "object__", "prediction": "prediction__"}
    return {f"{prefix[s.level]}{s.name}": s for s in specs}


def build_image_metrics_asset(
    metric_modules: tuple[str, ...] = (),
    prediction_pixels: tuple[str, ...] = (),
    min_score: float = 0.0,
) -> dg.AssetsDefinition:
    """The image-pass multi-asset over the built-in pixel metrics and those of ``metric_modules``;
    with ``prediction_pixels`` (model names, ``*`` = all), the object pixel metrics of those
    models' predictions scoring at least ``min_score`` too."""
    specs = pixel_specs(metric_modules, bool(prediction_pixels))
    ins = {
        "manifest": dg.AssetIn(key=["dataset", "manifest"], metadata={LAZY: True}),
        "annotations": dg.AssetIn(key=["dataset", "annotations"], metadata={LAZY: True}),
    }
    if prediction_pixels:
        ins["predictions"] = dg.AssetIn(key=["dataset", "predictions"], metadata={LAZY: True})
    outs = {**{name: metric_out(spec) for name, spec in specs.items()}, **EMBEDDING_OUTS}

    @dg.multi_asset(
        name="image_pass",
        partitions_def=dataset_versions,
        can_subset=True,
        ins=ins,
        outs=outs,
        internal_asset_deps=_input_deps(outs, specs, ins),
    )
    def image_pass(
        context: dg.AssetExecutionContext,
        qm: QmResource,
        manifest: StoredTable,
        annotations: StoredTable,
        **predicted: StoredTable,
    ):
        """Decode each measurable image once (only those whose values are not cached yet);
        compute every selected image and object metric and the embeddings on it."""
        predictions = predicted.get("predictions")
        selected = {"/".join(k.path) for k in context.selected_asset_keys}
        chosen = {n: s for n, s in specs.items() if s.asset_key in selected}
        provider = qm.embedding_provider
        result = measure_images(
            manifest.url,
            list(chosen.values()),
            qm.storage,
            context.partition_key,
            chunk_size=qm.chunk_size,
            annotations=annotations.url,
            embeddings=EMBEDDINGS in selected,
            object_embeddings=OBJECT_EMBEDDINGS in selected,
            embedder=provider if is_function(provider) else "",
            backend=backend_for(qm.workers, qm.dask_scheduler),
            log=context.log.info,
            predicted=Predicted(predictions.url, prediction_pixels, min_score)
            if predictions is not None
            else None,
        )
        if provider and not is_function(provider) and EMBEDDINGS in selected:
            _replace_vectors(result, provider, manifest, context.partition_key)
        context.log.info(
            f"{len(chosen)} metrics on {result.images} images: {result.decoded} decoded, "
            f"{result.reused} reused from the cache, in {result.seconds:.1f}s, "
            f"{len(result.failures)} failures"
        )
        common = {
            "images decoded": dg.MetadataValue.int(result.decoded),
            "images reused": dg.MetadataValue.int(result.reused),
            "seconds (whole pass)": dg.MetadataValue.float(round(result.seconds, 3)),
            "backend": "dask " + qm.dask_scheduler if qm.dask_scheduler else "local pool",
        }
        for name, spec in chosen.items():
            table = StoredTable(result.outputs[spec.asset_key]).to_pandas(["value"])
            stages = ["read", "decode", f"metric:{spec.name}"]
            meta = {
                **value_summary(table),
                **common,
                "failures": dg.MetadataValue.int(result.failed(stages)),
            }
            stored = StoredTable(result.outputs[spec.asset_key], result.rows[spec.asset_key])
            yield dg.Output(stored, output_name=name, metadata=meta)
        for name, key in (("embeddings", EMBEDDINGS), ("object_embeddings", OBJECT_EMBEDDINGS)):
            if key in selected:
                rows = result.rows[key]
                stored = StoredTable(result.outputs[key], rows)
                meta = {"dagster/row_count": rows, **common}
                yield dg.Output(stored, output_name=name, metadata=meta)

    return image_pass


def _input_deps(
    outs: dict[str, dg.AssetOut], specs: dict[str, MetricSpec], ins: dict[str, dg.AssetIn]
) -> dict[str, set[dg.AssetKey]]:
    """Which inputs each output reads: only the metrics of predicted objects read the
    predictions (new predictions re-run those, not every pixel metric)."""
    keys = {name: asset_in.key for name, asset_in in ins.items()}
    labels = {keys["manifest"], keys["annotations"]}
    predicted = {keys["manifest"], keys["predictions"]} if "predictions" in keys else set()
    return {
        name: predicted if name in specs and specs[name].on_predictions else labels for name in outs
    }


def _replace_vectors(result, provider: str, manifest: StoredTable, version: str) -> None:
    """Put the provider's precomputed vectors into the embeddings table (read whole: the
    provider's file is per version and fits in memory)."""
    table = result.table(EMBEDDINGS)
    names = manifest.to_pandas(["image_id", "file_name"]).set_index("image_id").file_name
    table["vector"] = precomputed(provider, version, names.reindex(table.image_id).to_frame())
    storage.write_parquet(result.outputs[EMBEDDINGS], table)
