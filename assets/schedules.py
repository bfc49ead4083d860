"""``production_drift_schedule``: periodic drift of the newest production versions."""

import dagster as dg

from assets.jobs import production_drift_job
from assets.partitions import dataset_versions
from qm_dagster.watch import newest_production
from resources.dataset import QmResource


def build_production_drift_schedule(cron: str, timezone: str) -> dg.ScheduleDefinition:
    """Daily by default (``drift_schedule`` / ``QM_DRIFT_SCHEDULE``)."""

    @dg.schedule(
        name="production_drift_schedule",
        cron_schedule=cron,
        execution_timezone=timezone,
        job=production_drift_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"At '{cron}' ({timezone}): for each reference version, the newest "
        "production version (version.json kind=production, newest 'created') gets its drift "
        "against that reference re-computed with the drift checks, and its report rewritten. "
        "Failed drift checks show red on analysis/drift.",
    )
    def production_drift_schedule(context: dg.ScheduleEvaluationContext, qm: QmResource):
        names = context.instance.get_dynamic_partitions(dataset_versions.name)
        versions = newest_production(qm.root(), list(names))
        if not versions:
            return dg.SkipReason("no production version with a reference is registered")
        tick = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M")
        return [
            dg.RunRequest(
                partition_key=v,
                run_key=f"drift:{v}:{tick}",
                tags={"qm/trigger": "production-drift-schedule"},
            )
            for v in versions
        ]

    return production_drift_schedule
