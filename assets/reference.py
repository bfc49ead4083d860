"""The reference version as declared inputs.

A version's reference (version.json ``reference``) is a data-dependent partition, which
Dagster's partition mappings cannot express (no custom mappings). So each table a dependant
reads from its reference gets an alias asset ``reference/<table key>``, partitioned by version:
its partition X names the stored partition of ``<table key>`` for X's reference, and depends on
``<table key>`` (all partitions), so lineage shows the link. Drift, duplicates and the report
take these aliases as ordinary inputs; the IO manager resolves them to the reference's file, so
nothing is copied. ``reference_sensor`` re-materializes an alias (and its dependants) when the
reference's table lands after it.
"""

import dagster as dg

from assets.partitions import dataset_versions
from qm_dagster import storage
from resources.dataset import QmResource
from resources.io_manager import ALIAS, Alias

REFERENCED = (
    ("dataset", "manifest"),
    ("data", "embeddings"),
    ("analysis", "quality_table", "image"),
    ("analysis", "quality_table", "object"),
    ("analysis", "quality_table", "prediction"),
)
# An alias is materialized once when its version appears (cheap: no data is read); a reference
# landing later is reference_sensor's to follow, one version at a time.
REFERENCE_CONDITION = dg.AutomationCondition.missing().newly_true()


def reference_key(source: tuple[str, ...] | list[str]) -> list[str]:
    """The alias asset key of ``source``: ``reference/<source key>``."""
    return ["reference", *source]


def latest_storage_id(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> int:
    """Storage id of the latest materialization of ``key`` for ``partition`` (0 if none)."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    )
    return result.records[0].storage_id if result.records else 0


def _alias_asset(source: tuple[str, ...]) -> dg.AssetsDefinition:
    name = "/".join(source)

    @dg.asset(
        key=reference_key(source),
        partitions_def=dataset_versions,
        group_name="reference",
        deps=[dg.AssetDep(list(source), partition_mapping=dg.AllPartitionMapping())],
        metadata={ALIAS: True},
        automation_condition=REFERENCE_CONDITION,
        code_version="1",
        kinds={"python"},
        description=f"{name} of this version's reference version (version.json 'reference'): "
        "an alias to that partition's stored file, empty when there is no reference or it is "
        "not materialized yet.",
    )
    def alias(context: dg.AssetExecutionContext, qm: QmResource) -> dg.Output:
        reference = qm.version(context.partition_key).meta().reference or ""
        url = storage.asset_url(qm.storage, name, reference) if reference else ""
        landed = (
            latest_storage_id(context.instance, dg.AssetKey(list(source)), reference)
            if reference
            else 0
        )
        present = bool(reference) and storage.exists(url)  # the file is the truth
        if reference and not present:
            context.log.warning(
                f"reference {reference!r} has no {name} yet; reference_sensor re-runs this "
                "version's dependants when it lands"
            )
        return dg.Output(
            Alias(reference, url if present else ""),
            metadata={
                "reference": reference,
                "reference materialized": present,
                "reference storage id": landed,  # 0: not recorded by this instance
                "dagster/uri": dg.MetadataValue.path(url if present else ""),
            },
        )

    return alias


def build_reference_assets() -> list[dg.AssetsDefinition]:
    """One alias asset per table read from the reference."""
    return [_alias_asset(source) for source in REFERENCED]
