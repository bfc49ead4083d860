"""``qm explore`` on a 100k-image version: the first page's answer time and memory while paging.

Starts ``qm explore`` as its own process on a version materialized by ``benchmarks/scale.py``'s
pipeline (done once, into the cache, when missing) and asks it over HTTP as the page does:
``/api/meta``, then first pages sorted by several metrics of each level, with filters; then it
pages through the version (sequential and random offsets) and samples the server's RSS. The
baseline, in the same run: what ``qm show --sort`` does (pandas reads the whole image table,
sorts, takes the head).

Usage: python benchmarks/explorer.py [--size 100000] [--pages 400] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import scale, scale_data

FIRST_PAGES = [
    {"level": "image", "sort": "data/brightness", "order": "asc"},
    {"level": "image", "sort": "data/sharpness", "order": "desc"},
    {"level": "image", "sort": "data/uniqueness", "order": "asc", "flags": ["duplicate"]},
    {
        "level": "image",
        "sort": "model/confidence@detector:mean",
        "order": "desc",
        "ranges": [{"column": "data/brightness", "min": 0.2, "max": 0.5}],
        "classes": ["class_3"],
    },
    {"level": "object", "sort": "label/relative_area", "order": "asc"},
    {"level": "object", "sort": "label/object_brightness", "order": "desc", "flags": ["outlier"]},
    {"level": "prediction", "sort": "model/iou", "order": "asc", "model": "detector"},
]


def materialized(size: int, cache: Path) -> tuple[Path, str]:
    """The storage folder of the generated version of ``size`` images, materialized once."""
    version = scale_data.base_version(size, cache)
    work = cache / "materialized" / version.name
    storage = work / "storage"
    if not (storage / "analysis/quality_table/image" / f"{version.name}.parquet").is_file():
        print(f"materializing {version.name} once into {work} (minutes)", flush=True)
        scale.pipeline(version, work)
    return storage, version.name


def start(storage: Path, version: str) -> tuple[subprocess.Popen, str]:
    """``qm explore VERSION --port 0`` in its own process; its URL once it listens."""
    env = {**os.environ, "QM_STORAGE": str(storage)}
    cmd = [sys.executable, "-m", "qm_dagster.cli", "explore", version, "--port", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        sys.exit(f"qm explore did not start: {line!r}")
    return proc, line.split("on ", 1)[1].split()[0].rstrip("/")


def ask(url: str, body: dict | None = None) -> tuple[float, dict]:
    """Seconds for one request and its JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, data=data)) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - start, answer


def thumbnails(url: str, rows: list[dict]) -> float:
    """Seconds to fetch a page's thumbnails, 6 requests at a time (a browser's per-host limit)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=6) as pool:
        sizes = list(pool.map(lambda r: len(_get(f"{url}/thumb?id={r['image_id']}")), rows))
    assert all(sizes), "a thumbnail failed"
    return time.perf_counter() - start


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def pandas_first_page(storage: Path, version: str, column: str) -> float:
    """The baseline: what ``qm show --sort asc --by COLUMN --limit 60`` does."""
    code = (
        "import time, pandas as pd; s = time.perf_counter(); "
        f"t = pd.read_parquet({str(storage / 'analysis/quality_table/image' / f'{version}.parquet')!r}); "
        f"t.sort_values({column!r}, kind='stable').head(60); print(time.perf_counter() - s)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--cache", type=Path, default=scale_data.CACHE)
    args = parser.parse_args()
    storage, version = materialized(args.size, args.cache)
    proc, url = start(storage, version)
    rss = lambda: psutil.Process(proc.pid).memory_info().rss / 2**20  # noqa: E731
    try:
        seconds, meta = ask(f"{url}/api/meta")
        rows = {level: v["rows"] for level, v in meta["levels"].items()}
        print(f"{version}: {rows}; /api/meta (levels, metric ranges) {seconds:.2f} s")
        firsts = []
        for query in FIRST_PAGES:
            seconds, page = ask(f"{url}/api/page", {"query": {**query, "limit": 60}})
            firsts.append(seconds)
            print(f"  first page {json.dumps(query)}: {seconds:.3f} s, {page['total']} match")
        seconds, page = ask(f"{url}/api/page", {"query": {**FIRST_PAGES[0], "limit": 60}})
        thumbs = thumbnails(url, page["rows"])
        print(f"  its 60 thumbnails, 6 at a time as a browser asks: {thumbs:.2f} s")
        details = [ask(f"{url}/api/detail?id={r['image_id']}")[0] for r in page["rows"][:10]]
        print(
            f"  the detail of its first 10 images (boxes, values, flags, duplicate group, "
            f"label errors): median {statistics.median(details) * 1000:.0f} ms, worst "
            f"{max(details) * 1000:.0f} ms"
        )
        baseline = pandas_first_page(storage, version, "data/brightness")
        print(
            f"first page: worst {max(firsts):.3f} s, median {statistics.median(firsts):.3f} s "
            f"(target <= 1 s); pandas read + sort of the image table {baseline:.2f} s = "
            f"{baseline / firsts[0]:.1f}x the explorer's brightness page"
        )
        marks = {}
        query = {"level": "image", "sort": "data/brightness", "limit": 60}
        total = rows["image"]
        rng = random.Random(0)
        times = []
        for i in range(args.pages):
            offset = i * 60 if i < args.pages // 2 else rng.randrange(0, total)
            seconds, _ = ask(f"{url}/api/page", {"query": {**query, "offset": offset}})
            times.append(seconds)
            if i + 1 in (10, args.pages // 2, args.pages):
                marks[i + 1] = rss()
        print(
            f"paging {args.pages} pages (half in order, half at random offsets): median "
            f"{statistics.median(times) * 1000:.0f} ms, worst {max(times) * 1000:.0f} ms; server RSS "
            + ", ".join(f"after {n} pages {mb:.0f} MB" for n, mb in marks.items())
        )
        growth = marks[args.pages] - marks[10]
        print(f"RSS growth from page 10 to page {args.pages}: {growth:+.0f} MB")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
