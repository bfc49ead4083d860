"""The one configuration surface: environment variables over a YAML file over defaults.

``QM_DATASETS`` (dataset root URL), ``QM_STORAGE`` (output base URL), ``QM_CONFIG`` (YAML path,
default ``qm.yaml`` in the working directory when present). YAML keys: ``datasets``, ``storage``,
``workers``, ``chunk_size``, ``max_pixels``, ``metric_modules`` (list of importable modules whose
``@metric`` functions become assets), ``embedding_provider`` (``module:function`` called with each
RGB image, or a Parquet/NumPy file URL with ``{version}``, replacing the built-in embedding),
``slices`` (named filters, see :mod:`qm_dagster.slices`),
``checks`` (YAML of test cases, default ``checks.yaml`` in the working directory when present),
``sensor_interval`` (seconds between sensor/automation ticks, 30), ``scan_window`` (known versions
re-checked per tick, 50), ``drift_schedule`` (cron, daily at 06:00), ``drift_timezone`` (UTC),
``alert_webhook`` (URL for failure alerts; empty = off), ``score_threshold`` (0.5: detections
counted in precision/recall), ``buckets`` (5 quantile buckets per metric in sliced evaluation),
``bucket_edges`` (YAML only: ``{metric: [edges]}``: an image metric's buckets instead of
quantiles; an object or prediction metric's buckets, evaluated only where given),
``drift_tests`` (YAML only: ``{metric: test}`` or ``{metric: {test: T, threshold: X}}``, the
drift test of a metric or of ``class_shares``; see :mod:`qm_dagster.drift.stattests`),
``outlier_rules`` (YAML only: ``{metric: tukey|adjusted|log}``, see :mod:`qm_dagster.outliers`).
``dask_scheduler`` (address of a ``dask.distributed`` scheduler: the image pass's chunks run
there, empty = the local process pool), ``annotation_errors`` (``quarantine``: a malformed record of annotations.json becomes a
``data_issues`` row and the rest is measured; ``strict``: it fails the version),
``diversity_clusters`` (k-means clusters of ``data/diversity``; 0 = the number of classes,
else 10), ``diversity_seed`` (0), ``agreement_neighbours`` (nearest objects of
``label/neighbour_agreement``, 10), ``prediction_pixels`` (models whose predicted objects get
every object pixel metric as ``model/object_...``, in the image pass: a list, or ``"*"`` for
every model; empty = off, as these decode images; predictions scoring at least
``score_threshold``),
``executor`` (``multiprocess``: a process per step, Dagster's default; ``in_process`` saves
the few seconds of process start per step on small versions; the image pass has its own pool
either way). Each scalar has a ``QM_<NAME>`` variable.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from qm_dagster.errors import QmError
from qm_dagster.slices import parse_slices

DEFAULT_HOME = ".qm"
DEFAULT_MAX_PIXELS = 100_000_000
EXECUTORS = ("multiprocess", "in_process")
ANNOTATION_ERRORS = ("quarantine", "strict")


@dataclass(frozen=True)
class Settings:
    """Resolved settings; every field has a default that runs the demo."""

    datasets: str = f"{DEFAULT_HOME}/datasets"
    storage: str = f"{DEFAULT_HOME}/storage"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    chunk_size: int = 0  # images per pool task; 0 = automatic (16 to 256 by pass size)
    max_pixels: int = DEFAULT_MAX_PIXELS
    metric_modules: tuple[str, ...] = ()
    embedding_provider: str = ""
    slices: tuple = ()  # tuple[Slice, ...], from the YAML's ``slices`` mapping
    checks: str = field(
        default_factory=lambda: "checks.yaml" if Path("checks.yaml").is_file() else ""
    )
    sensor_interval: int = 30  # seconds between sensor and automation ticks
    scan_window: int = 50  # known versions re-checked per sensor tick (re-uploads, predictions)
    drift_schedule: str = "0 6 * * *"  # cron of production_drift_schedule
    drift_timezone: str = "UTC"
    alert_webhook: str = ""  # URL the alert sensors POST to; empty = alerts off
    score_threshold: float = 0.5  # detections counted in precision/recall/F1 and TP/FP
    buckets: int = 5  # quantile buckets per metric in sliced evaluation
    bucket_edges: tuple = ()  # ((metric, (edge, ...)), ...): explicit buckets for some metrics
    drift_tests: tuple = ()  # ((metric, test, threshold or None), ...): drift test per metric
    outlier_rules: tuple = ()  # ((metric, rule), ...): outlier fence rule per metric
    executor: str = "multiprocess"  # Dagster executor of every run: multiprocess | in_process
    dask_scheduler: str = ""  # tcp://host:8786: the image pass's chunks run on that Dask cluster
    annotation_errors: str = "quarantine"  # a malformed record: quarantine it | strict: fail
    diversity_clusters: int = 0  # k-means clusters of data/diversity; 0 = classes, else 10
    diversity_seed: int = 0  # k-means seed of data/diversity
    agreement_neighbours: int = 10  # nearest objects label/neighbour_agreement looks at
    prediction_pixels: tuple[str, ...] = ()  # models measured by object pixel metrics; * = all

    @classmethod
    def load(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read ``QM_CONFIG`` YAML (if any) then apply ``QM_*`` environment overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        config_path = env.get("QM_CONFIG") or ("qm.yaml" if Path("qm.yaml").is_file() else None)
        if config_path:
            values.update(_read_yaml(config_path))
        overrides = {
            "datasets": env.get("QM_DATASETS"),
            "storage": env.get("QM_STORAGE"),
            "workers": env.get("QM_WORKERS"),
            "chunk_size": env.get("QM_CHUNK_SIZE"),
            "max_pixels": env.get("QM_MAX_PIXELS"),
            "metric_modules": env.get("QM_METRIC_MODULES"),
            "embedding_provider": env.get("QM_EMBEDDING_PROVIDER"),
            "checks": env.get("QM_CHECKS"),
            "sensor_interval": env.get("QM_SENSOR_INTERVAL"),
            "scan_window": env.get("QM_SCAN_WINDOW"),
            "drift_schedule": env.get("QM_DRIFT_SCHEDULE"),
            "drift_timezone": env.get("QM_DRIFT_TIMEZONE"),
            "alert_webhook": env.get("QM_ALERT_WEBHOOK"),
            "score_threshold": env.get("QM_SCORE_THRESHOLD"),
            "buckets": env.get("QM_BUCKETS"),
            "executor": env.get("QM_EXECUTOR"),
            "dask_scheduler": env.get("QM_DASK_SCHEDULER"),
            "annotation_errors": env.get("QM_ANNOTATION_ERRORS"),
            "diversity_clusters": env.get("QM_DIVERSITY_CLUSTERS"),
            "diversity_seed": env.get("QM_DIVERSITY_SEED"),
            "agreement_neighbours": env.get("QM_AGREEMENT_NEIGHBOURS"),
            "prediction_pixels": env.get("QM_PREDICTION_PIXELS"),
        }
        values.update({k: v for k, v in overrides.items() if v})
        return cls(**_coerce(values, config_path))


def _read_yaml(path: str) -> dict[str, object]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise QmError(f"QM_CONFIG {path}: cannot read ({exc})") from exc
    if not isinstance(data, dict):
        raise QmError(f"QM_CONFIG {path}: expected a mapping at the top level")
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise QmError(f"QM_CONFIG {path}: unknown keys {unknown}; known keys are {sorted(known)}")
    return data


def _coerce(values: dict[str, object], source: str | None) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        try:
            if key == "score_threshold":
                out[key] = float(value)  # type: ignore[arg-type]
                if not 0.0 <= out[key] <= 1.0:
                    raise ValueError("must be between 0 and 1")
            elif key == "executor":
                if value not in EXECUTORS:
                    raise ValueError(f"must be one of {EXECUTORS}")
                out[key] = value
            elif key == "annotation_errors":
                if value not in ANNOTATION_ERRORS:
                    raise ValueError(f"must be one of {ANNOTATION_ERRORS}")
                out[key] = value
            elif key == "bucket_edges":
                out[key] = _bucket_edges(value)
            elif key == "drift_tests":
                out[key] = _drift_tests(value)
            elif key == "outlier_rules":
                out[key] = _outlier_rules(value)
            elif key == "chunk_size":
                out[key] = int(value)  # type: ignore[arg-type]
                if out[key] < 0:
                    raise ValueError("must be >= 0 (0 = automatic)")
            elif key in ("diversity_clusters", "diversity_seed"):
                out[key] = int(value)  # type: ignore[arg-type]
                if out[key] < 0:
                    raise ValueError("must be >= 0")
            elif key in (
                "workers",
                "max_pixels",
                "sensor_interval",
                "scan_window",
                "buckets",
                "agreement_neighbours",
            ):
                out[key] = int(value)  # type: ignore[arg-type]
                if out[key] < 1:
                    raise ValueError("must be >= 1")
            elif key == "slices":
                out[key] = parse_slices(value, source or "configuration")
            elif key in ("metric_modules", "prediction_pixels"):
                items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[arg-type]
                out[key] = tuple(m.strip() for m in items if m.strip())
            else:
                out[key] = str(value)
        except (TypeError, ValueError) as exc:
            raise QmError(f"setting {key}={value!r} ({source or 'environment'}): {exc}") from exc
    return out


def _bucket_edges(value: object) -> tuple:
    """``{metric: [e0, e1, ...]}`` with at least two strictly increasing numbers per metric."""
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of metric -> list of edges")
    out = []
    for metric, edges in value.items():
        if not isinstance(edges, list) or len(edges) < 2:
            raise ValueError(f"{metric}: expected a list of at least two edges")
        numbers = [float(e) for e in edges]
        if any(b <= a for a, b in itertools.pairwise(numbers)):
            raise ValueError(f"{metric}: edges must be strictly increasing, got {edges}")
        out.append((str(metric), tuple(numbers)))
    return tuple(out)


def _drift_tests(value: object) -> tuple:
    """``{metric: test}`` or ``{metric: {test: T, threshold: X}}`` with registered tests."""
    from qm_dagster.drift import stattests

    if not isinstance(value, dict):
        raise ValueError("expected a mapping of metric -> test name or {test, threshold}")
    out = []
    for metric, choice in value.items():
        spec = choice if isinstance(choice, dict) else {"test": choice}
        unknown = set(spec) - {"test", "threshold"}
        if unknown or "test" not in spec:
            raise ValueError(f"{metric}: expected a test name or {{test, threshold}}")
        test = str(spec["test"])
        if test not in stattests.names():
            raise ValueError(f"{metric}: no drift test {test!r}; one of {stattests.names()}")
        threshold = spec.get("threshold")
        out.append((str(metric), test, None if threshold is None else float(threshold)))
    return tuple(out)


def _outlier_rules(value: object) -> tuple:
    """``{metric: rule}`` with rules of ``OUTLIER_RULES``."""
    from qm_dagster.metrics.registry import OUTLIER_RULES

    if not isinstance(value, dict):
        raise ValueError("expected a mapping of metric -> outlier rule")
    bad = {m: r for m, r in value.items() if r not in OUTLIER_RULES}
    if bad:
        raise ValueError(f"{bad}: a rule is one of {OUTLIER_RULES}")
    return tuple((str(m), str(r)) for m, r in value.items())
