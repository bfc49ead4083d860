"""pycocotools' own evaluation, the reference the evaluation tests compare with."""

from __future__ import annotations

import contextlib
import io

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
