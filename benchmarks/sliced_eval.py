"""Benchmark: sliced evaluation (one COCOeval per model, slices re-using its matching) against
running pycocotools from scratch once per slice, on coco-val2014-fake100 (100 images, 734 boxes).

Prints the ratio (from scratch / ours) for 18 image metrics x 5 quantile buckets, and checks the
two give the same AP on every slice.

Usage: python benchmarks/sliced_eval.py [--data ../shared/data] [--metrics 18]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import numpy as np
    import pandas as pd
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from qm_dagster.evaluation import evaluate, image_slice
    from qm_dagster.sliced import _image_buckets, quantile_edges

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--metrics", type=int, default=18)
    args = parser.parse_args()
    src = Path(args.data) / "coco-val2014-fake100"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(src / "instances_val2014_100.json"))
        dt = gt.loadRes(str(src / "results" / "instances_val2014_fakebbox100_results.json"))
    ids = sorted(gt.getImgIds())
    rng = np.random.default_rng(0)
    table = pd.DataFrame({f"m{k}": rng.random(len(ids)) for k in range(args.metrics)}, index=ids)
    slices = [
        s
        for col in table
        for s in _image_buckets(table[col], quantile_edges(table[col].to_numpy()))
    ]

    start = time.perf_counter()
    ev = evaluate(gt, dt)
    ours = [image_slice(ev, s[3])["AP"] for s in slices]
    t_ours = time.perf_counter() - start

    start = time.perf_counter()
    scratch = []
    for s in slices:
        fresh = COCOeval(gt, dt, "bbox")
        fresh.params.imgIds = s[3]
        with contextlib.redirect_stdout(io.StringIO()):
            fresh.evaluate()
            fresh.accumulate()
            fresh.summarize()
        scratch.append(fresh.stats[0])
    t_scratch = time.perf_counter() - start
    worst = max(abs(a - b) for a, b in zip(ours, scratch, strict=True))
    print(f"{len(slices)} slices ({args.metrics} metrics x 5 buckets) of {len(ids)} images")
    print(f"ours (one evaluation, re-indexed accumulates): {t_ours:.2f} s")
    print(f"pycocotools from scratch per slice:             {t_scratch:.2f} s")
    print(f"ratio scratch / ours = {t_scratch / t_ours:.2f}; max |AP difference| = {worst:.1e}")


if __name__ == "__main__":
    main()
