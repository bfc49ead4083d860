"""The composition root: builds the one ``Definitions`` that workspace.yaml loads."""

from __future__ import annotations

import dagster as dg

from assets.alerts import build_alert_sensors
from assets.analysis import build_analysis_assets
from assets.classification import classification_inputs, classification_tables
from assets.dataset import dataset_manifest
from assets.dead_runs import build_dead_runs_sensor
from assets.image_metrics import build_image_metrics_asset
from assets.jobs import JOBS
from assets.reference import build_reference_assets
from assets.schedules import build_production_drift_schedule
from assets.sensors import (
    build_new_predictions_sensor,
    build_new_versions_sensor,
    build_reference_sensor,
)
from assets.similarity import (
    analysis_duplicates,
    build_embedding_metric_assets,
    data_uniqueness,
)
from assets.table_metrics import (
    build_label_metrics_asset,
    build_model_metrics_asset,
    dataset_predictions,
    model_matching,
)
from qm_dagster.checks import load_checks
from qm_dagster.config import Settings
from qm_dagster.metrics import load_metrics
from resources.dataset import QmResource
from resources.io_manager import ParquetIOManager

# Analysis follows its inputs: a new version, a re-upload or new predictions flow to drift,
# evaluation, checks and report with no click. Metrics are launched by the boundary sensors.
ANALYSIS_CONDITION = dg.AutomationCondition.eager()


def _automated(asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """``asset`` with ANALYSIS_CONDITION on its analysis/* keys."""
    if not any(key.path[0] == "analysis" for key in asset.keys):
        return asset
    return asset.map_asset_specs(
        lambda spec: (
            spec.replace_attributes(automation_condition=ANALYSIS_CONDITION)
            if spec.key.path[0] == "analysis"
            else spec
        )
    )


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Definitions for ``settings`` (environment + QM_CONFIG by default)."""
    settings = settings or Settings.load()
    load_metrics(settings.metric_modules)
    checks = tuple(load_checks(settings.checks)) if settings.checks else ()
    assets = [
        dataset_manifest,
        dataset_predictions,
        model_matching,
        classification_inputs,
        classification_tables,
        build_image_metrics_asset(
            settings.metric_modules, settings.prediction_pixels, settings.score_threshold
        ),
        build_label_metrics_asset(settings.metric_modules),
        build_model_metrics_asset(settings.metric_modules),
        data_uniqueness,
        *build_embedding_metric_assets(
            settings.diversity_clusters, settings.diversity_seed, settings.agreement_neighbours
        ),
        *build_reference_assets(),
        analysis_duplicates,
        *build_analysis_assets(
            settings.metric_modules,
            checks,
            settings.slices,
            evaluation={
                "score": settings.score_threshold,
                "buckets": settings.buckets,
                "edges": {m: list(e) for m, e in settings.bucket_edges},
            },
            drift_tests=settings.drift_tests,
            fence_rules=settings.outlier_rules,
            on_predictions=bool(settings.prediction_pixels),
        ),
    ]
    interval, window = settings.sensor_interval, settings.scan_window
    return dg.Definitions(
        assets=[_automated(a) for a in assets],
        jobs=list(JOBS),
        sensors=[
            build_new_versions_sensor(interval, window),
            build_new_predictions_sensor(interval, window),
            build_reference_sensor(interval),
            build_dead_runs_sensor(interval),
            dg.AutomationConditionSensorDefinition(
                "analysis_automation_sensor",
                target=dg.AssetSelection.all(),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=interval,
                description="Evaluates the assets' automation conditions (eager on analysis/*) "
                "so analysis follows new metrics without a click. On by default.",
            ),
            *build_alert_sensors(settings.alert_webhook, interval),
        ],
        schedules=[
            build_production_drift_schedule(settings.drift_schedule, settings.drift_timezone)
        ],
        executor=dg.in_process_executor
        if settings.executor == "in_process"
        else dg.multiprocess_executor,
        resources={
            "qm": QmResource(
                datasets=settings.datasets,
                storage=settings.storage,
                workers=settings.workers,
                chunk_size=settings.chunk_size,
                max_pixels=settings.max_pixels,
                embedding_provider=settings.embedding_provider,
                dask_scheduler=settings.dask_scheduler,
                strict_annotations=settings.annotation_errors == "strict",
            ),
            "io_manager": ParquetIOManager(base_url=settings.storage),
        },
    )


defs = build_definitions()
