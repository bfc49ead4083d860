"""Named slices: filters on a level's quality table, named once in configuration and used by the
CLI (``qm show --slice``, ``qm export``), checks and sliced evaluation.

```yaml
slices:
  dark: "`data/brightness` < 0.25"                  # image level by default
  tiny_objects:
    level: object
    where: "`label/relative_area` < 0.001"
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from qm_dagster.errors import QmError

LEVELS = ("image", "object", "prediction")


@dataclass(frozen=True)
class Slice:
    name: str
    where: str
    level: str = "image"

    @property
    def table(self) -> str:
        """The quality-table asset the slice filters."""
        return f"analysis/quality_table/{self.level}"


def parse_slices(raw: Any, source: str = "configuration") -> tuple[Slice, ...]:
    if raw in (None, ""):
        return ()
    if not isinstance(raw, dict):
        raise QmError(f"slices in {source}: expected a mapping of name -> filter")
    out = []
    for name, spec in raw.items():
        if isinstance(spec, str):
            spec = {"where": spec}
        if not isinstance(spec, dict) or "where" not in spec:
            raise QmError(f"slice {name!r} in {source}: needs a 'where' filter")
        level = spec.get("level", "image")
        if level not in LEVELS:
            raise QmError(f"slice {name!r} in {source}: level must be one of {LEVELS}")
        out.append(Slice(str(name), str(spec["where"]), level))
    return tuple(out)


def find(slices: tuple[Slice, ...], name: str) -> Slice:
    for s in slices:
        if s.name == name:
            return s
    raise QmError(f"no slice named {name!r}; configured: {[s.name for s in slices]}")


def apply(s: Slice, table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` in the slice."""
    try:
        return table.query(s.where)
    except Exception as exc:
        raise QmError(
            f"slice {s.name!r} ({s.where}): {exc}; columns are {list(table.columns)[:20]}…"
        ) from exc
