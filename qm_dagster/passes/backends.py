"""Where the pass's chunks run: a local process pool (the default) or a Dask cluster.

Either way a chunk's worker reads its images from the dataset URL and writes its values to the
cache in the storage itself; the driver only hands out chunks (a bounded number in flight) and
collects a few counts per chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from qm_dagster.passes.decode import ChunkResult, init_worker, measure_task
from qm_dagster.passes.pool import map_chunks

Task = tuple[Sequence[Any], Any]  # (image items, PassRequest)


class Backend(Protocol):
    def slots(self) -> int:
        """How many chunks run at once."""
        ...

    def run(self, tasks: Iterable[Task], modules: tuple[str, ...]) -> Iterator[ChunkResult]:
        """Run every task; yield each one's result as it finishes (any order)."""
        ...


class LocalPool:
    """``workers`` processes on this machine (inline when 1), forked from a preloaded server."""

    def __init__(self, workers: int):
        self.workers = workers

    def slots(self) -> int:
        return max(1, self.workers)

    def run(self, tasks: Iterable[Task], modules: tuple[str, ...]) -> Iterator[ChunkResult]:
        for _, result in map_chunks(measure_task, tasks, (), self.workers, init_worker, (modules,)):
            yield result


_READY: set[tuple[str, ...]] = set()


def _dask_task(task: Task, modules: tuple[str, ...]) -> ChunkResult:
    """One chunk on a Dask worker: set the process up once, then measure."""
    if modules not in _READY:
        init_worker(modules)
        _READY.add(modules)
    return measure_task(task)


class DaskBackend:
    """Chunks as tasks on a ``dask.distributed`` cluster at ``address`` (``tcp://host:8786``),
    at most ``2 x`` the cluster's threads in flight. The workers need qm-dagster (and any custom
    metric modules) installed, and access to the dataset and storage URLs."""

    def __init__(self, address: str):
        self.address = address

    def slots(self) -> int:
        from distributed import Client

        with Client(self.address, set_as_default=False) as client:
            return max(1, sum(client.nthreads().values()))

    def run(self, tasks: Iterable[Task], modules: tuple[str, ...]) -> Iterator[ChunkResult]:
        from distributed import Client, as_completed

        with Client(self.address, set_as_default=False) as client:
            threads = max(1, sum(client.nthreads().values()))
            source = iter(tasks)
            futures = as_completed(loop=client.loop)
            for task in source:
                futures.add(client.submit(_dask_task, task, modules, pure=False))
                if futures.count() >= 2 * threads:
                    break
            for future in futures:
                yield future.result()
                future.release()
                task = next(source, None)
                if task is not None:
                    futures.add(client.submit(_dask_task, task, modules, pure=False))


def backend_for(workers: int, dask_address: str = "") -> Backend:
    """The configured backend: Dask when a scheduler address is set, else the local pool."""
    return DaskBackend(dask_address) if dask_address else LocalPool(workers)
