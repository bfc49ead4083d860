"""The image pass: every selected image-level metric from one decode of each image, on all cores."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from qm_dagster.decode import init_worker, measure_chunk
from qm_dagster.metrics.registry import MetricSpec
from qm_dagster.metrics.view import Header
from qm_dagster.pool import chunked, map_chunks

FAILURE_COLUMNS = ["image_id", "stage", "reason"]


@dataclass
class PassResult:
    """Per-metric tables ``image_id, value`` plus what it cost and what failed."""

    values: dict[str, pd.DataFrame]
    failures: pd.DataFrame
    decoded: int
    seconds: float
    stats: dict[str, float] = field(default_factory=dict)


def measure_images(
    manifest: pd.DataFrame,
    specs: Sequence[MetricSpec],
    workers: int = 1,
    chunk_size: int = 32,
) -> PassResult:
    """Compute ``specs`` for the measurable (``ok``) rows of ``manifest``.

    Header metrics come from the manifest's width/height (no decode). Pixel metrics share one
    decode per image; if none is selected, nothing is decoded. Pool workers import the modules
    that define the selected metrics, so custom metrics must live in importable modules.
    """
    start = time.perf_counter()
    ok = manifest[manifest["ok"]]
    values: dict[str, pd.DataFrame] = {}
    for spec in (s for s in specs if s.reads == "header"):
        vals = [spec.fn(Header(int(w), int(h))) for w, h in zip(ok.width, ok.height, strict=True)]
        values[spec.name] = pd.DataFrame({"image_id": ok.image_id.to_list(), "value": vals})
    pixel_specs = [s for s in specs if s.reads != "header"]
    decoded = 0
    failures: list[tuple[object, str, str]] = []
    if pixel_specs:
        items = list(zip(ok.image_id.to_list(), ok.url.to_list(), strict=True))
        keys = [s.asset_key for s in pixel_specs]
        by_chunk: dict[int, list[tuple[object, list[float]]]] = {}
        for idx, (rows, fails, n) in map_chunks(
            measure_chunk,
            chunked(items, chunk_size),
            (keys,),
            workers,
            init_worker,
            (tuple(sorted({s.fn.__module__ for s in pixel_specs})),),
        ):
            by_chunk[idx] = rows
            failures.extend(fails)
            decoded += n
        rows = [row for idx in sorted(by_chunk) for row in by_chunk[idx]]
        ids = [r[0] for r in rows]
        for j, spec in enumerate(pixel_specs):
            values[spec.name] = pd.DataFrame({"image_id": ids, "value": [r[1][j] for r in rows]})
    return PassResult(
        values=values,
        failures=pd.DataFrame(failures, columns=FAILURE_COLUMNS),
        decoded=decoded,
        seconds=time.perf_counter() - start,
    )
