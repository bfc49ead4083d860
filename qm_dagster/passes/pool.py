"""Run a function over chunks on a process pool with bounded work in flight, or inline."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import forkserver
from typing import Any, TypeVar

T = TypeVar("T")

# The standard library keeps one fork server per process and reads its preload list only when
# it starts it, so every pool here names the same modules: whichever pool (or
# ``start_fork_server``) starts the server first has it preload what all of them need.
PRELOAD = (
    "qm_dagster.manifest",
    "qm_dagster.passes.decode",
    "qm_dagster.metrics.image",
    "qm_dagster.metrics.kernels",
    # the report's charts (``report_charts.ChartBatch``): matplotlib and its SVG backend
    "qm_dagster.report_charts",
    "matplotlib.figure",
    "matplotlib.ticker",
    "matplotlib.backends.backend_svg",
)
_started = False  # whether this process has started its fork server


def start_fork_server() -> None:
    """Start this process's fork server now: it imports ``PRELOAD`` in its own process while this
    one goes on (``qm materialize`` starts it first, so that the preload runs on a core its own
    single-threaded start-up leaves idle, and the first pool forks at once)."""
    _forkserver_context()
    forkserver.ensure_running()


def server_started() -> bool:
    """Whether this process has started its fork server (``start_fork_server`` or a pool): a
    pool is then a fork away, not a server's start-up and preload (~1 s)."""
    return _started


def _forkserver_context() -> multiprocessing.context.ForkServerContext:
    """The fork-server start method, with ``PRELOAD`` as what a server it starts imports."""
    global _started
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    _started = True
    return ctx


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def map_chunks(
    fn: Callable[..., Any],
    chunks: Iterable[Sequence[Any]],
    args: tuple[Any, ...],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...],
) -> Iterator[tuple[int, Any]]:
    """Yield ``(chunk index, fn(chunk, *args))`` as chunks finish.

    With ``workers == 1`` everything runs in this process. Otherwise at most ``2 * workers`` chunks
    are in flight, so memory is bounded by the chunk size, not the dataset. Workers come from a
    fork server that has preloaded ``PRELOAD`` (the caller may be a threaded Dagster process, so
    no plain fork; and spawn would re-import the caller's ``__main__``, e.g. all of Dagster, per
    worker). The fork server outlives one call, so ``initializer`` gets this process's current
    ``sys.path`` and environment to apply first.
    """
    if workers <= 1:
        initializer(*initargs)
        for i, chunk in enumerate(chunks):
            yield i, fn(chunk, *args)
        return
    with process_pool(workers, initializer, initargs) as pool:
        pending: dict[Future[Any], int] = {}
        source = enumerate(chunks)
        for i, chunk in source:
            pending[pool.submit(fn, chunk, *args)] = i
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                idx = pending.pop(fut)
                yield idx, fut.result()
                nxt = next(source, None)
                if nxt is not None:
                    pending[pool.submit(fn, nxt[1], *args)] = nxt[0]


@contextmanager
def process_pool(
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[ProcessPoolExecutor]:
    """``workers`` processes from a fork server that has preloaded ``PRELOAD``, each given this
    process's current ``sys.path`` and environment, then ``initializer(*initargs)``."""
    ctx = _forkserver_context()
    context = (list(sys.path), dict(os.environ), initializer, initargs)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_with_context, initargs=context
    ) as pool:
        yield pool


def _init_with_context(
    path: list[str],
    environ: dict[str, str],
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    if initializer is not None:
        initializer(*initargs)
