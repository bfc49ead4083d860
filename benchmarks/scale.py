"""The image pass at scale, on generated versions of real photos (see ``scale_data.py``).

Each step runs as the Dagster steps do, in its own process (manifest, then the pass), watched
from here: wall time, images decoded / reused, and the peak RSS of every process of the pass
(driver, fork server, workers). Prints, measured in this one run:

  (1) the pass on s10k and s100k: images/s; peak RSS of each process; 100k peak / 10k peak
  (2) s100k-shared (90% of s100k's images, a tenth of them renamed): decoded (= the new 10%),
      first pass / this pass
  (3) kill -9 half-way through s10k, rerun: decoded by the rerun vs images left unfinished
  (4) s10k on a Dask LocalCluster (2 worker processes, 1 thread each) / on the local pool,
      and whether every output table is identical
  (5) every asset of a labelled version materialized through Dagster by ``qm materialize`` (in
      its own process, in-process executor), on ``--pipeline`` sizes (default 12000, 100000):
      the command's wall time / its image pass step, and each step's share, from the run's
      step stats

Usage: python benchmarks/scale.py [--small 10000] [--large 100000] [--steps 1,2,3,4,5]
       [--pipeline 12000,100000] [--cache DIR] (generated data, written once)
       [--work DIR] (outputs, deleted at the end)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import scale_data  # noqa: E402  (light: numpy and OpenCV only)

# --- the child side: one Dagster-like step per process ----------------------------------------


def child_manifest(version_dir: str, storage: str) -> dict:
    from qm_dagster.dataset import DatasetRoot
    from qm_dagster.manifest import write_manifest

    folder = Path(version_dir)
    version = DatasetRoot(str(folder.parent)).version(folder.name)
    start = time.perf_counter()
    coco = version.instances()
    summary = write_manifest(
        version,
        10**8,
        f"{storage}/dataset/manifest/{folder.name}.parquet",
        f"{storage}/dataset/data_issues/{folder.name}.parquet",
        threads=8,
        table=coco.images if coco is not None else None,
    )
    if coco is not None:
        from qm_dagster import storage as store

        url = store.asset_url(storage, "dataset/annotations", folder.name)
        store.write_parquet(url, coco.annotations)
    return {"rows": summary.rows, "seconds": time.perf_counter() - start}


def child_pass(version: str, storage: str, workers: int, dask_workers: int) -> dict:
    from qm_dagster.metrics import load_metrics, metrics
    from qm_dagster.passes.backends import DaskBackend, LocalPool
    from qm_dagster.passes.image_pass import measure_images

    load_metrics(())
    specs = [
        s
        for s in metrics(None, ())
        if s.level in ("image", "object") and (s.reads_pixels or s.reads == "header")
    ]
    cluster = None
    if dask_workers:
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=dask_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        backend = DaskBackend(cluster.scheduler_address)
    else:
        backend = LocalPool(workers)
    print(json.dumps({"started": True}), flush=True)
    result = measure_images(
        f"{storage}/dataset/manifest/{version}.parquet",
        specs,
        storage,
        version,
        annotations=f"{storage}/dataset/annotations/{version}.parquet",
        embeddings=True,
        object_embeddings=True,
        backend=backend,
        log=lambda line: print(json.dumps({"log": line}), flush=True),
    )
    if cluster is not None:
        cluster.close()
    return {
        "seconds": result.seconds,
        "decoded": result.decoded,
        "reused": result.reused,
        "images": result.images,
        "failures": len(result.failures),
        **result.stats,
    }


def timed_process(cmd: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float, str]:
    """Run ``cmd`` to its exit, its output (stdout and stderr) to a file: the time is the
    process's own, from start to exit, as a shell's ``time`` gives it. (Reading its output from
    pipes would also wait for any helper process still holding them, such as a fork server
    that outlives its parent by a few hundred milliseconds.)"""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, **kwargs)
        seconds = time.perf_counter() - start
        out.seek(0)
        return done, seconds, out.read()


def child_pipeline(version: str, datasets: str, storage: str, home: str) -> dict:
    """``qm materialize VERSION`` (every asset) as users run it, in its own process: its wall
    time, then the run's step durations (read afterwards, not timed)."""
    env = dict(os.environ, DAGSTER_HOME=home, QM_DATASETS=datasets, QM_STORAGE=storage)
    env["QM_PROJECT"] = str(ROOT)
    Path(home).mkdir(parents=True, exist_ok=True)
    link = Path(home) / "dagster.yaml"  # the project's instance settings, as `qm` uses them
    if not link.exists():
        link.symlink_to(ROOT / "dagster.yaml")
    qm = Path(sys.executable).parent / "qm"
    done, seconds, output = timed_process([str(qm), "materialize", version], env=env, cwd=home)
    if done.returncode != 0:
        print(output[-4000:], file=sys.stderr)
    os.environ["DAGSTER_HOME"] = home
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        steps = {
            s.step_key: s.end_time - s.start_time
            for s in instance.get_run_step_stats(run.run_id)
            if s.end_time and s.start_time
        }
    return {"ok": done.returncode == 0, "seconds": seconds, "steps": steps}


# --- the parent side ---------------------------------------------------------------------


class Watch:
    """Peak RSS of a process and all its descendants, sampled every 0.1 s."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    name = self._role(p)
                except psutil.Error:
                    continue
                if rss > self.peaks.get(p.pid, ("", 0))[1]:
                    self.peaks[p.pid] = (name, rss)
            self._stop.wait(0.1)

    def _role(self, p) -> str:
        if p.pid == self.root.pid:
            return "driver"
        cmd = " ".join(p.cmdline())
        parent = " ".join(p.parent().cmdline()) if p.parent() else ""
        if "materialize" in cmd:  # the `qm materialize` process
            return "driver"
        if "resource_tracker" in cmd:
            return "resource tracker"
        if "forkserver" in parent:
            return "pool worker"
        if "forkserver" in cmd:
            return "fork server"
        return "dask process" if "spawn" in cmd or "dask" in cmd else "other"

    def stop(self) -> dict[str, float]:
        """Peak RSS in MB per role (the largest process of each role)."""
        self._stop.set()
        self._thread.join()
        out: dict[str, float] = {}
        for role, rss in self.peaks.values():
            out[role] = max(out.get(role, 0.0), rss / 2**20)
        return out


def run_child(args: list[str], kill_when=None, watch: bool = True) -> tuple[dict, dict[str, float]]:
    """Run this script as a child step; return its JSON result and its processes' peak RSS
    (``watch``: sampled every 0.1 s, which costs the measured processes some CPU; else none)."""
    cmd = [sys.executable, __file__, "--child", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    watcher = Watch(proc.pid) if watch else None
    result: dict = {}
    for line in proc.stdout:
        msg = json.loads(line)
        if "log" in msg:
            print(f"      {msg['log']}", flush=True)
        elif "started" not in msg:
            result = msg
        if kill_when is not None and kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    peaks = watcher.stop() if watcher else {}
    if kill_when is None and proc.returncode != 0:
        sys.exit(f"child {args} failed with exit code {proc.returncode}")
    return result, peaks


def manifest(version_dir: Path, storage: Path) -> dict:
    result, peaks = run_child(["manifest", str(version_dir), str(storage)])
    result["peak MB"] = peaks.get("driver", 0.0)
    return result


def image_pass(version: str, storage: Path, workers: int, dask: int = 0, kill_when=None):
    args = ["pass", version, str(storage), str(workers), str(dask)]
    result, peaks = run_child(args, kill_when=kill_when)
    # the driver's own kernel-reported peak (ru_maxrss) is exact; sampling can miss a spike
    exact = result.get("peak MB after assembly", 0.0)
    if "driver" in peaks:
        peaks["driver"] = max(peaks["driver"], exact)
    return result, peaks


def pipeline(version_dir: Path, work: Path) -> None:
    """Step (5) on one version, its images in the page cache: whole run / image pass, and every
    step's share."""
    print(f"\n(5) every asset of {version_dir.name} through Dagster", flush=True)
    read = warm(version_dir / "images")
    print(f"    page cache warmed: {read / 1e6:.0f} MB read", flush=True)
    args = [version_dir.name, str(version_dir.parent), str(work / "storage"), str(work / "home")]
    result, peaks = run_child(["pipeline", *args])
    steps = result["steps"]
    total = result["seconds"]
    pass_step = steps.get("image_pass", float("nan"))
    for key, sec in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"    {key:34s} {sec:7.1f} s  {sec / total:6.1%}")
    print(
        f"    (5) whole run {total:.1f} s (ok: {result['ok']}), image pass {pass_step:.1f} s; "
        f"run / pass = {total / pass_step:.2f}  (target <= 1.5); peak RSS {fmt_peaks(peaks)}",
        flush=True,
    )


def warm(images: Path) -> int:
    """Read every image file once (untimed), so that a run does not pay a page cache another
    job dropped (a 12k manifest took 1.9 s instead of 1.1 s right after the 1M benchmark)."""
    return sum(len(p.read_bytes()) for p in images.rglob("*") if p.is_file())


def _phases(result: dict) -> str:
    """The driver's own peak after each phase, as the pass recorded it."""
    keys = [k for k in result if k.startswith("peak MB after")]
    return "driver " + ", ".join(f"{k[len('peak MB ') :]} {result[k]:.0f} MB" for k in keys)


def fmt_peaks(peaks: dict[str, float]) -> str:
    return ", ".join(f"{role} {mb:.0f} MB" for role, mb in sorted(peaks.items()))


def parts_rows(storage: Path) -> int:
    import pyarrow.parquet as pq

    from qm_dagster.passes.cache import CACHE_DIR

    return sum(
        pq.read_metadata(p).num_rows for p in (storage / CACHE_DIR / "image").glob("*.parquet")
    )


def same_outputs(a: Path, b: Path, version: str) -> bool:
    import pandas as pd

    files = sorted(p.relative_to(a) for p in a.glob(f"*/*/{version}.parquet"))
    files = [f for f in files if not str(f).startswith("dataset/")]
    for rel in files:
        if not (b / rel).is_file():
            return False
        try:
            pd.testing.assert_frame_equal(pd.read_parquet(a / rel), pd.read_parquet(b / rel))
        except AssertionError as exc:
            print(f"      {rel}: {str(exc).splitlines()[0]}")
            return False
    return bool(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--steps", default="1,2,3,4,5")
    parser.add_argument("--pipeline", default="12000,100000")
    parser.add_argument("--cache", type=Path, default=scale_data.CACHE)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "manifest":
            out = child_manifest(*rest)
        elif kind == "pipeline":
            out = child_pipeline(*rest)
        else:
            out = child_pass(rest[0], rest[1], int(rest[2]), int(rest[3]))
        print(json.dumps(out), flush=True)
        return
    steps = {int(s) for s in args.steps.split(",")}
    work = Path(args.work or tempfile.mkdtemp(prefix="qm-scale-"))
    print(f"data {args.cache}, outputs {work}, {args.workers} workers", flush=True)
    small = scale_data.base_version(args.small, args.cache)
    large = scale_data.base_version(args.large, args.cache) if 1 in steps or 2 in steps else None
    try:
        report: dict[str, float] = {}
        local_small = work / "local-small"
        if steps & {1, 4}:
            print(f"\n(1) fresh pass, {small.name}", flush=True)
            m = manifest(small, local_small)
            print(
                f"    manifest {m['rows']} images in {m['seconds']:.1f}s, peak {m['peak MB']:.0f} MB"
            )
            r, p_small = image_pass(small.name, local_small, args.workers)
            rate = r["decoded"] / r["seconds"]
            report["small seconds"] = r["seconds"]
            print(
                f"    pass {r['seconds']:.1f}s, {r['decoded']} decoded, {rate:.1f} images/s; "
                f"peak RSS: {fmt_peaks(p_small)}; {_phases(r)}",
                flush=True,
            )
        if 1 in steps or 2 in steps:
            storage = work / "large"
            print(f"\n(1) fresh pass, {large.name}", flush=True)
            m = manifest(large, storage)
            print(
                f"    manifest {m['rows']} images in {m['seconds']:.1f}s, peak {m['peak MB']:.0f} MB"
            )
            r, p_large = image_pass(large.name, storage, args.workers)
            first = r["seconds"]
            rate = r["decoded"] / r["seconds"]
            print(
                f"    pass {r['seconds']:.1f}s, {r['decoded']} decoded, {rate:.1f} images/s; "
                f"peak RSS: {fmt_peaks(p_large)}; {_phases(r)}",
                flush=True,
            )
            if 1 in steps:
                for role in sorted(set(p_large) & set(p_small)):
                    print(
                        f"    (1) peak RSS {role}: {large.name} / {small.name} = "
                        f"{p_large[role] / p_small[role]:.2f}  (target <= 1.2)"
                    )
            if 2 in steps:
                shared = scale_data.shared_version(args.large, 0.9, args.cache)
                print(f"\n(2) {shared.name}, same storage", flush=True)
                m = manifest(shared, storage)
                print(f"    manifest {m['rows']} images in {m['seconds']:.1f}s")
                r, _ = image_pass(shared.name, storage, args.workers)
                print(f"    pass {r['seconds']:.1f}s: {r['decoded']} decoded, {r['reused']} reused")
                print(
                    f"    (2) decoded {r['decoded']} of {r['images']} (new images: "
                    f"{args.large - round(args.large * 0.9)}); first pass / this pass = "
                    f"{first / r['seconds']:.1f}  (target >= 5)",
                    flush=True,
                )
        if 3 in steps:
            storage = work / "killed"
            print(f"\n(3) kill -9 half-way, {small.name}", flush=True)
            manifest(small, storage)
            half = args.small // 2
            image_pass(
                small.name, storage, args.workers, kill_when=lambda: parts_rows(storage) >= half
            )
            done = parts_rows(storage)
            left = args.small - done
            r, _ = image_pass(small.name, storage, args.workers)
            from qm_dagster.passes.image_pass import auto_chunk_size

            chunk = auto_chunk_size(args.small, args.workers)
            print(
                f"    killed with {done} images in finished chunks; rerun decoded {r['decoded']}"
                f" ({left} unfinished + at most {args.workers} x {chunk} in flight)"
            )
            print(
                f"    (3) rerun decoded - unfinished = {r['decoded'] - left}  "
                f"(target <= {args.workers * chunk})",
                flush=True,
            )
        if 4 in steps:
            storage = work / "dask-small"
            print(f"\n(4) {small.name} on a Dask LocalCluster (2 processes x 1 thread)", flush=True)
            manifest(small, storage)
            r, _ = image_pass(small.name, storage, args.workers, dask=2)
            print(f"    pass {r['seconds']:.1f}s, {r['decoded']} decoded")
            same = same_outputs(local_small, storage, small.name)
            print(
                f"    (4) dask / local pool = {r['seconds'] / report['small seconds']:.2f}  "
                f"(target <= 1.3); identical outputs: {same}",
                flush=True,
            )
        if 5 in steps:
            for size in (int(n) for n in args.pipeline.split(",")):
                pipeline(scale_data.base_version(size, args.cache), work / f"pipeline-{size}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
