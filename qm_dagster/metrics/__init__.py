"""Metric registry and built-in metrics."""

from qm_dagster.metrics.registry import MetricSpec, get, load_metrics, metric, metrics

__all__ = ["MetricSpec", "get", "load_metrics", "metric", "metrics"]
