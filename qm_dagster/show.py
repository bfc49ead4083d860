"""Slicing a table from the terminal: filter, sort, limit."""

from __future__ import annotations

import json
import math

import pandas as pd

from qm_dagster.errors import QmError


def select_rows(
    frame: pd.DataFrame,
    where: str | None = None,
    sort: str | None = None,
    by: str = "value",
    limit: int | None = None,
) -> pd.DataFrame:
    """Rows of ``frame`` matching the pandas query ``where``, sorted by ``by``, first ``limit``."""
    if where:
        try:
            frame = frame.query(where)
        except Exception as exc:
            raise QmError(f"--where {where!r}: {exc}; columns are {list(frame.columns)}") from exc
    if sort:
        if by not in frame.columns:
            raise QmError(f"--by {by!r}: no such column; columns are {list(frame.columns)}")
        frame = frame.sort_values(by, ascending=sort == "asc", kind="stable")
    return frame.head(limit) if limit else frame


def to_json(frame: pd.DataFrame) -> str:
    """Records as JSON with floats at full precision (pandas' to_json rounds to 15 digits)."""
    records = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]
    return json.dumps(records, indent=2, default=str)
