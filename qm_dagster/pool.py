"""Run a function over chunks on a process pool with bounded work in flight, or inline."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")


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
    are in flight, so memory is bounded by the chunk size, not the dataset. Workers are spawned
    (not forked) because the caller may be a threaded Dagster process.
    """
    if workers <= 1:
        initializer(*initargs)
        for i, chunk in enumerate(chunks):
            yield i, fn(chunk, *args)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=initializer, initargs=initargs
    ) as pool:
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
