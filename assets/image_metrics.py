"""Every image-level metric as its own ``data/<metric>`` asset, all fed by one decode per image.

One subsettable multi-asset over the registry: materializing ``data/brightness`` alone computes
only brightness; materializing all of them decodes each image once.
"""

import dagster as dg

from assets.metadata import value_summary
from assets.partitions import dataset_versions
from qm_dagster.image_pass import measure_images
from qm_dagster.metrics.registry import MetricSpec, metrics
from resources.dataset import QmResource

ENGINE_VERSION = "1"


def metric_out(spec: MetricSpec) -> dg.AssetOut:
    lo, hi = spec.value_range
    return dg.AssetOut(
        key=["data", spec.name],
        description=spec.description,
        is_required=False,
        code_version=f"{ENGINE_VERSION}.{spec.code_version}",
        kinds={"python", "opencv"} if spec.reads != "header" else {"python"},
        tags={
            "qm/level": "image",
            "qm/reads": spec.reads,
            "qm/origin": "builtin" if spec.builtin else "custom",
        },
        metadata={
            "range": f"[{'' if lo is None else lo}, {'' if hi is None else hi}]",
            "unit": spec.unit,
        },
    )


def build_image_metrics_asset(metric_modules: tuple[str, ...] = ()) -> dg.AssetsDefinition:
    """The multi-asset over the built-in image metrics and those of ``metric_modules``."""
    specs = {spec.name: spec for spec in metrics("image", metric_modules)}

    @dg.multi_asset(
        name="image_metrics",
        partitions_def=dataset_versions,
        group_name="data",
        can_subset=True,
        ins={"manifest": dg.AssetIn(key=["dataset", "manifest"])},
        outs={name: metric_out(spec) for name, spec in specs.items()},
    )
    def image_metrics(context: dg.AssetExecutionContext, qm: QmResource, manifest):
        """Decode each measurable image once and compute every selected metric on it."""
        selected = [specs[key.path[-1]] for key in sorted(context.selected_asset_keys)]
        result = measure_images(manifest, selected, workers=qm.workers, chunk_size=qm.chunk_size)
        context.log.info(
            f"{len(selected)} metrics on {len(manifest)} images: {result.decoded} decoded in "
            f"{result.seconds:.1f}s, {len(result.failures)} failures"
        )
        for spec in selected:
            frame = result.values[spec.name]
            failed = result.failures[
                result.failures.stage.isin(["read", "decode", f"metric:{spec.name}"])
            ]
            meta = value_summary(frame)
            meta.update(
                {
                    "images decoded": dg.MetadataValue.int(result.decoded),
                    "seconds (whole pass)": dg.MetadataValue.float(round(result.seconds, 3)),
                    "failures": dg.MetadataValue.int(len(failed)),
                }
            )
            yield dg.Output(frame, output_name=spec.name, metadata=meta)

    return image_metrics
