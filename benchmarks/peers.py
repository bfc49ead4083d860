"""Our whole pipeline against CleanVision and fastdup on the same generated real-photo version.

Ours: every asset materialized through Dagster by ``qm materialize`` in its own process
(``scale.py``'s step 5), on ``s<size>-unlabeled`` (the same image files and nothing else, the
input the peers see: image pass, embeddings, uniqueness, duplicates, quality table, outliers, drift-free report)
and, for scale, on ``s<size>`` (those images with labels and a model: also label and model
metrics, matching, evaluation, sliced evaluation, label errors). The ratios use the first. CleanVision: ``Imagelab(data_path).find_issues()`` (its default issue types: dark,
light, blurry, low information, odd aspect ratio, odd size, grayscale, exact and near
duplicates). fastdup: ``fastdup.create(work_dir, input_dir).run()`` (embeddings, similarity,
outliers, duplicates, stats). Each peer runs in its own virtualenv, created once under the cache
(``pip install cleanvision fastdup``: benchmark tools, not project dependencies), in a fresh
process, with all cores, after every image file has been read once (the same warm page cache
for each). Prints each wall time and peer / ours, measured in this one run.

Usage: python benchmarks/peers.py [--size 10000] [--cache DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import scale, scale_data  # noqa: E402

PEER_PACKAGES = ("cleanvision>=0.3,<0.4", "fastdup>=2.5,<3")

CLEANVISION = """
import json, sys, time
start = time.perf_counter()
from cleanvision import Imagelab
lab = Imagelab(data_path=sys.argv[1])
lab.find_issues()
summary = lab.issue_summary
print(json.dumps({"seconds": time.perf_counter() - start, "images": len(lab.issues),
                  "issues": {r.issue_type: int(r.num_images) for r in summary.itertuples()}}))
"""

FASTDUP = """
import json, sys, time
start = time.perf_counter()
import fastdup
fd = fastdup.create(work_dir=sys.argv[2], input_dir=sys.argv[1])
fd.run(overwrite=True, print_summary=False)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "similar pairs": int(len(fd.similarity())),
                  "outliers": int(len(fd.outliers()))}))
"""


def peer_python(cache: Path) -> Path:
    """The peers' interpreter, in a virtualenv made once under ``cache``."""
    venv = cache / "peers-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} (pip install {' '.join(PEER_PACKAGES)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    return python


def run_peer(python: Path, code: str, *args: str) -> dict:
    """One peer in a fresh process: its JSON line, and the process's whole wall time (to its
    exit, as ours: ``scale.timed_process``)."""
    done, wall, output = scale.timed_process([str(python), "-c", code, *args])
    if done.returncode != 0:
        sys.exit(f"peer failed ({done.returncode}):\n{output[-3000:]}")
    result = json.loads(output.strip().splitlines()[-1])
    result["wall"] = wall
    return result


def ours(version_dir: Path, work: Path) -> dict:
    """Every asset of the version through Dagster: ``qm materialize`` in its own process, timed
    from its start to its exit (scale.py's step 5)."""
    args = [version_dir.name, str(version_dir.parent), str(work / "storage"), str(work / "home")]
    result, _ = scale.run_child(["pipeline", *args], watch=False)  # the peers run unwatched too
    result["wall"] = result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--cache", type=Path, default=scale_data.CACHE)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    version = scale_data.base_version(args.size, args.cache)
    unlabeled = scale_data.unlabeled_version(args.size, args.cache)
    images = version / "images"
    work = Path(args.work or tempfile.mkdtemp(prefix="qm-peers-"))
    python = peer_python(args.cache)
    print(f"{version.name}: {args.size} images, {os.cpu_count()} cores, outputs {work}", flush=True)
    try:
        print(f"  page cache warmed: {scale.warm(images) / 1e6:.0f} MB read", flush=True)
        mine = ours(unlabeled, work / "ours")
        print(f"  ours, images only (every asset): {mine['wall']:.1f} s (ok {mine['ok']})")
        labelled = ours(version, work / "ours-labelled")
        print(
            f"  ours, with labels and a model (every asset): {labelled['wall']:.1f} s "
            f"(ok {labelled['ok']})"
        )
        scale.warm(images)
        cv = run_peer(python, CLEANVISION, str(images))
        print(
            f"  CleanVision find_issues: {cv['wall']:.1f} s; {cv['images']} images, {cv['issues']}"
        )
        scale.warm(images)
        fd = run_peer(python, FASTDUP, str(images), str(work / "fastdup"))
        print(
            f"  fastdup run: {fd['wall']:.1f} s; {fd['similar pairs']} similar pairs, "
            f"{fd['outliers']} outliers"
        )
        print(
            f"  CleanVision / ours = {cv['wall'] / mine['wall']:.2f}, "
            f"fastdup / ours = {fd['wall'] / mine['wall']:.2f}  (target >= 3 each)",
            flush=True,
        )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
