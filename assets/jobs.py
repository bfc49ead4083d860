"""Named jobs for the launchpad and for the sensors and schedule that launch runs."""

import dagster as dg

from assets.reference import REFERENCED, reference_key
from qm_dagster.classification import METRICS as CLASS_METRICS

METRIC_GROUPS = ("dataset", "data", "label", "model")

version_metrics_job = dg.define_asset_job(
    "version_metrics_job",
    selection=dg.AssetSelection.groups(*METRIC_GROUPS),
    description="Every metric of one dataset version: manifest, one decode pass for the image "
    "and object pixel metrics, label, sequence and model metrics, embeddings, uniqueness.",
)

CLASS_MODEL_KEYS = [key.split("/") for key in CLASS_METRICS if key.startswith("model/")]

model_metrics_job = dg.define_asset_job(
    "model_metrics_job",
    selection=dg.AssetSelection.assets(["dataset", "predictions"])
    | dg.AssetSelection.groups("model") - dg.AssetSelection.assets(*CLASS_MODEL_KEYS),
    description="Only the predictions table and the model metrics of one version (no pixels "
    "read): what new or changed predictions need. Analysis follows by automation.",
)

class_metrics_job = dg.define_asset_job(
    "class_metrics_job",
    selection=dg.AssetSelection.assets(
        ["dataset", "predictions"], ["dataset", "class_predictions"], *CLASS_MODEL_KEYS
    ),
    description="A classification version's class probabilities and the model metrics made "
    "from them: what new or changed probability files need. Analysis follows by automation.",
)

analysis_job = dg.define_asset_job(
    "analysis_job",
    selection=dg.AssetSelection.groups("analysis", "reference"),
    description="Every analysis asset of one version (quality tables, outliers, duplicates, "
    "drift, sliced evaluation, label errors, importance, report) and their checks, from stored "
    "metrics, with the reference/* aliases they read.",
)

production_drift_job = dg.define_asset_job(
    "production_drift_job",
    selection=dg.AssetSelection.assets(
        ["analysis", "drift"],
        ["analysis", "report"],
        *(reference_key(s) for s in REFERENCED if s[0] == "analysis"),
    ),
    description="Drift of a production version against its reference (with the drift checks) "
    "and its report: what production_drift_schedule runs.",
)

REFERENCE_DEPENDANTS = (["analysis", "drift"], ["analysis", "duplicates"], ["analysis", "report"])

reference_dependants_job = dg.define_asset_job(
    "reference_dependants_job",
    selection=dg.AssetSelection.assets(*REFERENCE_DEPENDANTS)
    | dg.AssetSelection.groups("reference"),
    description="The reference/* aliases of a version and what reads them (drift, duplicates "
    "against the reference, the report): what reference_sensor runs when a reference lands "
    "after its dependants.",
)

JOBS = (
    version_metrics_job,
    model_metrics_job,
    class_metrics_job,
    analysis_job,
    production_drift_job,
    reference_dependants_job,
)
