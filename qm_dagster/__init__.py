"""qm-dagster: quality metrics for computer-vision datasets, as Dagster assets.

Public API: ``metric`` (register a custom metric) and ``load`` (read a materialized table).
"""

from typing import Any

from qm_dagster.metrics.registry import metric

__all__ = ["load", "metric"]


def __getattr__(name: str) -> Any:
    # ``load`` pulls in pandas; pool workers import this package and must start fast.
    if name == "load":
        from qm_dagster.api import load

        return load
    raise AttributeError(name)
