"""Sensors at the system boundary: new dataset versions and new or changed predictions; and
a version's reference landing after the version's reference/* aliases (a data-dependent
partition: version.json ``reference``), which ``reference_sensor`` follows.

Both keep their state in the cursor and fall back on what the instance recorded (the signature
each materialization read, in its metadata), so a cursor reset or a restart never runs a version
twice; run keys carry the content signature, so the daemon de-duplicates as well.
"""

import json

import dagster as dg

from assets.dataset import SIGNATURE_LABEL
from assets.jobs import (
    REFERENCE_DEPENDANTS,
    class_metrics_job,
    model_metrics_job,
    reference_dependants_job,
    version_metrics_job,
)
from assets.partitions import dataset_versions
from assets.reference import latest_storage_id
from assets.table_metrics import PREDICTION_FILES_LABEL
from qm_dagster.dataset import CLASSIFICATION
from qm_dagster.watch import (
    prediction_signatures,
    rotating_window,
    scan_versions,
    signatures_digest,
)
from resources.dataset import QmResource

MANIFEST = dg.AssetKey(["dataset", "manifest"])
PREDICTIONS = dg.AssetKey(["dataset", "predictions"])
# what a dependant reads from its reference; it lands last of them (it needs every metric)
REFERENCE_LANDED = dg.AssetKey(["analysis", "quality_table", "image"])


def recorded_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str, label: str):
    """The value of ``label`` in the latest materialization of ``key`` for ``partition``."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    )
    if not result.records:
        return None
    materialization = result.records[0].asset_materialization
    value = materialization.metadata.get(label) if materialization else None
    return None if value is None else value.value


def _state(cursor: str | None) -> dict:
    return json.loads(cursor) if cursor else {"seen": {}, "position": 0}


def _cursor(seen: dict, position: int) -> str:
    return json.dumps({"seen": seen, "position": position}, sort_keys=True)


def build_new_versions_sensor(interval: int, window: int) -> dg.SensorDefinition:
    """``new_versions_sensor``: complete, unseen versions become partitions and metric runs."""

    @dg.sensor(
        name="new_versions_sensor",
        job=version_metrics_job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Lists the dataset root (QM_DATASETS, local or s3://). Each complete "
        "(version.json written), validly named version that is new, or re-uploaded (its "
        "version.json changed), becomes a dataset_versions partition and a version_metrics_job "
        "run in the same tick. Half-written versions wait; invalid names are logged.",
    )
    def new_versions_sensor(context: dg.SensorEvaluationContext, qm: QmResource):
        state = _state(context.cursor)
        seen: dict[str, str] = state["seen"]
        scan = scan_versions(qm.root(), seen, state["position"], window)
        partitions = set(context.instance.get_dynamic_partitions(dataset_versions.name))
        requests, added = [], []
        for name, signature in sorted(scan.landed.items()):
            if name not in seen and name in partitions:
                done = recorded_metadata(context.instance, MANIFEST, name, SIGNATURE_LABEL)
                if done == signature:
                    continue  # computed before a cursor reset: nothing new
            if name not in partitions:
                added.append(name)
            requests.append(
                dg.RunRequest(
                    partition_key=name,
                    run_key=f"version:{name}:{signatures_digest({name: signature})}",
                    tags={"qm/trigger": "re-upload" if name in seen else "new version"},
                )
            )
        for name in scan.incomplete:
            context.log.info(f"version {name!r} has no version.json yet: waiting")
        for name in scan.invalid:
            context.log.warning(f"folder {name!r} is not a valid version name: ignored")
        present = set(scan.present)
        kept = {n: s for n, s in seen.items() if n in present}
        cursor = _cursor({**kept, **scan.unchanged, **scan.landed}, scan.position)
        if not requests:
            return dg.SensorResult(skip_reason="no new or re-uploaded version", cursor=cursor)
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[dataset_versions.build_add_request(added)]
            if added
            else [],
            cursor=cursor,
        )

    return new_versions_sensor


def build_new_predictions_sensor(interval: int, window: int) -> dg.SensorDefinition:
    """``new_predictions_sensor``: changed prediction files re-run only the model metrics."""

    @dg.sensor(
        name="new_predictions_sensor",
        jobs=[model_metrics_job, class_metrics_job],
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Watches predictions/<model>.json (a classification version's .csv / "
        ".parquet too) of every known version (etag, or mtime and size). A new, changed or "
        "removed file runs model_metrics_job (dataset/predictions and model/*; "
        "class_metrics_job for a classification version) for that version only: no image is "
        "decoded; analysis follows by automation.",
    )
    def new_predictions_sensor(context: dg.SensorEvaluationContext, qm: QmResource):
        state = _state(context.cursor)
        seen: dict[str, dict[str, str]] = state["seen"]
        partitions = sorted(context.instance.get_dynamic_partitions(dataset_versions.name))
        chosen, position = rotating_window(partitions, state["position"], window)
        requests = []
        for name in chosen:
            version = qm.version(name)
            current = prediction_signatures(version)
            before = seen.get(name)
            if before is None:
                before = recorded_metadata(
                    context.instance, PREDICTIONS, name, PREDICTION_FILES_LABEL
                )
                if before is None:
                    continue  # not computed yet: the version's own run reads these files
            if current != before:
                changed = sorted(set(current.items()) ^ set(before.items()))
                requests.append(
                    dg.RunRequest(
                        partition_key=name,
                        job_name=class_metrics_job.name
                        if version.task() == CLASSIFICATION
                        else model_metrics_job.name,
                        run_key=f"predictions:{name}:{signatures_digest(current)}",
                        tags={"qm/trigger": "predictions", "qm/models": _models(changed)},
                    )
                )
            seen[name] = current
        kept = {n: s for n, s in seen.items() if n in set(partitions)}
        cursor = _cursor(kept, position)
        if not requests:
            return dg.SensorResult(skip_reason="no new or changed predictions", cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return new_predictions_sensor


def _models(changed: list[tuple[str, str]]) -> str:
    """A tag value naming the changed models (tag values allow ``[A-Za-z0-9_.-]``, 63 chars)."""
    text = "_".join(sorted({m for m, _ in changed}))
    return "".join(c if c.isalnum() or c in "_.-" else "-" for c in text)[:63]


def _references(qm: QmResource, versions: list[str], log) -> dict[str, list[str]]:
    """``{reference: [versions that name it]}`` from each version's version.json."""
    out: dict[str, list[str]] = {}
    for name in versions:
        try:
            reference = qm.version(name).meta().reference
        except Exception as exc:  # a removed or unreadable version must not stop the others
            log.warning(f"version {name!r}: cannot read its version.json ({exc})")
            continue
        if reference:
            out.setdefault(reference, []).append(name)
    return out


def build_reference_sensor(interval: int) -> dg.SensorDefinition:
    """``reference_sensor``: a reference materialized after its dependants re-runs them."""

    @dg.sensor(
        name="reference_sensor",
        job=reference_dependants_job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Follows materializations of analysis/quality_table/image. When version R "
        "lands (or is re-materialized), each version whose version.json names R as its "
        "reference and whose drift, duplicates or report is older than R's tables (or ran "
        "without them) runs reference_dependants_job, so drift is never left empty or stale "
        "until the daily schedule. Dependants never materialized are left to the automation "
        "(a second run of them would race it).",
    )
    def reference_sensor(context: dg.SensorEvaluationContext, qm: QmResource):
        after = int(context.cursor or 0)
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=REFERENCE_LANDED, after_storage_id=after),
            limit=1000,
            ascending=True,
        ).records
        if not records:
            return dg.SensorResult(skip_reason="no version's tables landed", cursor=str(after))
        landed = {r.partition_key: r.storage_id for r in records if r.partition_key}
        versions = context.instance.get_dynamic_partitions(dataset_versions.name)
        dependants = _references(qm, list(versions), context.log)
        requests = []
        for reference, storage_id in sorted(landed.items()):
            for name in sorted(dependants.get(reference, [])):
                # never materialized: eager automation runs it, with the reference present
                stale = [
                    "/".join(k)
                    for k in REFERENCE_DEPENDANTS
                    if 0 < latest_storage_id(context.instance, dg.AssetKey(k), name) < storage_id
                ]
                if stale:
                    requests.append(
                        dg.RunRequest(
                            partition_key=name,
                            run_key=f"reference:{name}:{reference}:{storage_id}",
                            tags={"qm/trigger": "reference", "qm/reference": reference},
                        )
                    )
        cursor = str(max(r.storage_id for r in records))
        if not requests:
            return dg.SensorResult(
                skip_reason="no dependant older than its reference", cursor=cursor
            )
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return reference_sensor
