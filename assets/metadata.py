"""Metadata the Dagster UI shows for metric tables: counts, summary statistics, a histogram."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd

from qm_dagster.charts import data_url, hbars_png, histogram_png, sliced_chart


def value_summary(frame: pd.DataFrame, column: str = "value") -> dict[str, dg.MetadataValue]:
    """Row count, min/median/mean/max and a histogram (markdown image) of ``column``."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    meta: dict[str, dg.MetadataValue] = {
        "dagster/row_count": dg.MetadataValue.int(len(frame)),
        "missing values": dg.MetadataValue.int(int(values.size - finite.size)),
    }
    if finite.size:
        meta.update(
            {
                "min": dg.MetadataValue.float(float(finite.min())),
                "median": dg.MetadataValue.float(float(np.median(finite))),
                "mean": dg.MetadataValue.float(float(finite.mean())),
                "max": dg.MetadataValue.float(float(finite.max())),
            }
        )
    meta["histogram"] = dg.MetadataValue.md(f"![histogram]({data_url(histogram_png(finite))})")
    return meta


def table_preview(frame: pd.DataFrame, limit: int = 20) -> dg.MetadataValue:
    """The first ``limit`` rows as a Dagster table with its schema (column types from the
    frame: int, float, bool, else string); missing values are empty cells."""
    shown = frame.head(limit)
    columns = [dg.TableColumn(str(c), _column_type(shown[c])) for c in shown.columns]
    records = [
        dg.TableRecord({str(c): _cell(v) for c, v in zip(shown.columns, row, strict=True)})
        for row in shown.itertuples(index=False)
    ]
    return dg.MetadataValue.table(records, dg.TableSchema(columns))


def _column_type(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_integer_dtype(column):
        return "int"
    if pd.api.types.is_float_dtype(column):
        return "float"
    return "string"


def _cell(value: object) -> str | int | float | bool | None:
    """A table cell as Dagster stores it: numbers as numbers, missing as None, else text."""
    if value is None or (isinstance(value, float | np.floating) and not np.isfinite(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    return None if value is pd.NA or value is pd.NaT else str(value)


def chart(png: bytes, title: str) -> dg.MetadataValue:
    """A PNG chart as a markdown image (the UI renders data URLs)."""
    return dg.MetadataValue.md(f"![{title}]({data_url(png)})")


def drift_chart(frame: pd.DataFrame, limit: int = 20) -> dg.MetadataValue:
    """PSI per metric (every numeric row has it, whichever test decided), largest first,
    drifted ones in red."""
    rows = frame[frame.psi.notna()].sort_values("psi", ascending=False).head(limit)
    items = [(str(r.metric), float(r.psi), r.verdict == "drift") for r in rows.itertuples()]
    return chart(hbars_png(items), "PSI per metric")


def sliced_charts(frame: pd.DataFrame, metrics: list[str], stat: str = "AP50") -> dict:
    """One ``stat``-per-bucket chart per metric, keyed for the metadata panel."""
    present = set(frame.metric)
    return {
        f"{stat} by {m}": chart(sliced_chart(frame, m, stat), f"{stat} by {m}")
        for m in metrics
        if m in present
    }
