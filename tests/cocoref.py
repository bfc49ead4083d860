"""pycocotools' own evaluation, the reference the evaluation tests compare with."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.cocoeval import COCOeval


def fresh_pycocotools(gt, dt, image_ids=None, area_rng=None, iou_type="bbox") -> COCOeval:
    """pycocotools' evaluation of ``dt`` against ``gt`` (restricted to ``image_ids``; with
    ``area_rng`` instead of COCO's ranges), accumulated, and summarized under COCO's ranges."""
    fresh = COCOeval(gt, dt, iou_type)
    if image_ids is not None:
        fresh.params.imgIds = [int(i) for i in image_ids]
    if area_rng is not None:
        fresh.params.areaRng = [list(r) for r in area_rng]
        fresh.params.areaRngLbl = [f"r{i}" for i in range(len(area_rng))]
    with contextlib.redirect_stdout(io.StringIO()):
        fresh.evaluate()
        fresh.accumulate()
        if area_rng is None:  # summarize looks the ranges up by COCO's labels
            fresh.summarize()
    return fresh


def counts_at_50(fresh, score: float = 0.5) -> tuple[int, int, int]:
    """TP, FP among detections scoring >= ``score`` and FN, at the first threshold (IoU or OKS
    0.5), all areas, the largest maxDets, from pycocotools' own per-image results."""
    tp = fp = regular = 0
    last = fresh.params.maxDets[-1]
    for e in fresh.evalImgs:
        if e is None or e["aRng"] != fresh.params.areaRng[0] or e["maxDet"] != last:
            continue
        for m, ignored, s in zip(e["dtMatches"][0], e["dtIgnore"][0], e["dtScores"], strict=True):
            if not ignored and s >= score:
                tp, fp = tp + int(m > 0), fp + int(m == 0)
        regular += int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
    return tp, fp, regular - tp


def sliced(manifest, annotations, categories, preds, image_table, **options):
    """Our sliced evaluation of ``preds`` with the matching table made from the same inputs,
    as the asset runs it."""
    from qm_dagster.matching import matching
    from qm_dagster.sliced import sliced_evaluation

    matches = matching(manifest, annotations, categories, preds)
    return sliced_evaluation(
        manifest, annotations, categories, preds, matches, image_table, **options
    )
