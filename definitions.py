"""The composition root: builds the one ``Definitions`` that workspace.yaml loads."""

from __future__ import annotations

import dagster as dg

from assets.analysis import build_analysis_assets
from assets.dataset import dataset_manifest
from assets.image_metrics import build_image_metrics_asset
from assets.similarity import analysis_duplicates, data_uniqueness
from assets.table_metrics import (
    build_label_metrics_asset,
    build_model_metrics_asset,
    dataset_predictions,
)
from qm_dagster.checks import load_checks
from qm_dagster.config import Settings
from qm_dagster.metrics import load_metrics
from resources.dataset import QmResource
from resources.io_manager import ParquetIOManager


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Definitions for ``settings`` (environment + QM_CONFIG by default)."""
    settings = settings or Settings.load()
    load_metrics(settings.metric_modules)
    checks = tuple(load_checks(settings.checks)) if settings.checks else ()
    return dg.Definitions(
        assets=[
            dataset_manifest,
            dataset_predictions,
            build_image_metrics_asset(settings.metric_modules),
            build_label_metrics_asset(settings.metric_modules),
            build_model_metrics_asset(settings.metric_modules),
            data_uniqueness,
            analysis_duplicates,
            *build_analysis_assets(settings.metric_modules, checks, settings.slices),
        ],
        resources={
            "qm": QmResource(
                datasets=settings.datasets,
                storage=settings.storage,
                workers=settings.workers,
                chunk_size=settings.chunk_size,
                max_pixels=settings.max_pixels,
                embedding_provider=settings.embedding_provider,
            ),
            "io_manager": ParquetIOManager(base_url=settings.storage),
        },
    )


defs = build_definitions()
