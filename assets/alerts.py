"""Alert sensors: POST to ``alert_webhook`` when a run fails or a run's checks fail.

Asset-check alerting is a Dagster+ feature; in open-source Dagster a run-status sensor is the
hook. Both sensors are on only when a webhook is configured (``QM_ALERT_WEBHOOK``).
"""

import dagster as dg

from qm_dagster.alerts import FailedCheck, alert_payload, post_json


def failed_checks(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[FailedCheck]:
    """Every asset check that failed in one run, with its measured value when it has one."""
    out = []
    events = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    for record in events:
        evaluation = record.dagster_event.event_specific_data
        if evaluation.passed:
            continue
        measured = evaluation.metadata.get("measured")
        out.append(
            FailedCheck(
                asset=evaluation.asset_key.to_user_string(),
                check=evaluation.check_name,
                severity=evaluation.severity.value,
                partition=evaluation.partition or run.tags.get("dagster/partition"),
                description=evaluation.description,
                measured=None if measured is None else measured.value,
            )
        )
    return out


def _send(context, webhook: str, status: str, error: str = "") -> None:
    run = context.dagster_run
    checks = failed_checks(context.instance, run)
    if status == "SUCCESS" and not checks:
        return
    if not webhook:
        context.log.warning("alert_webhook (QM_ALERT_WEBHOOK) is not set: alert not sent")
        return
    payload = alert_payload(
        run.run_id, run.job_name, status, run.tags.get("dagster/partition"), checks, error
    )
    post_json(webhook, payload)


def build_alert_sensors(webhook: str, interval: int) -> list[dg.SensorDefinition]:
    """``run_failure_alert_sensor`` and ``check_failure_alert_sensor``."""
    status = dg.DefaultSensorStatus.RUNNING if webhook else dg.DefaultSensorStatus.STOPPED

    @dg.run_failure_sensor(
        name="run_failure_alert_sensor",
        minimum_interval_seconds=interval,
        default_status=status,
        description="POSTs to alert_webhook (QM_ALERT_WEBHOOK) when a run of this code "
        "location fails, with its failed checks. Off unless the webhook is set.",
    )
    def run_failure_alert_sensor(context: dg.RunFailureSensorContext):
        message = context.failure_event.message or ""
        _send(context, webhook, "FAILURE", message)

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name="check_failure_alert_sensor",
        minimum_interval_seconds=interval,
        default_status=status,
        description="POSTs to alert_webhook (QM_ALERT_WEBHOOK) when a successful run has failed "
        "asset checks (e.g. production drift). Off unless the webhook is set.",
    )
    def check_failure_alert_sensor(context: dg.RunStatusSensorContext):
        _send(context, webhook, "SUCCESS")

    return [run_failure_alert_sensor, check_failure_alert_sensor]
