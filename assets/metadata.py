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
    """The first ``limit`` rows as a markdown table."""
    if frame.empty:
        return dg.MetadataValue.md("_none_")
    shown = frame.head(limit).astype(str).replace({r"\|": r"\\|"}, regex=True)
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    body = "\n".join("| " + " | ".join(row) + " |" for row in shown.itertuples(index=False))
    more = f"\n\n_{len(frame) - limit} more rows_" if len(frame) > limit else ""
    return dg.MetadataValue.md(header + body + more)


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
