"""An ordered, chunked map over worker processes whose result never depends on the worker count.

``evaluate`` and the observer statistics score many independent items (cases, run groups). With
``workers`` > 1 the items go to a process pool in chunks; results come back in the items' order and
the first failing item *in that order* raises, so the output and the error are those of one worker.
Large read-only data (``shared``) reaches the workers by ``fork`` without pickling where the
platform forks; elsewhere it is pickled once per worker.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

#: Chunks per worker: enough to balance uneven items, few enough to keep the overhead low.
CHUNKS_PER_WORKER = 4

_shared: Any = None


def available_workers() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _set_shared(value: Any) -> None:
    global _shared
    _shared = value
    try:  # one thread per worker process: the pool is the parallelism
        import SimpleITK as sitk
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except ImportError:  # pragma: no cover
        pass


def _call(fn: Callable[[Any, T], R], item: T) -> R:
    return fn(_shared, item)


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods and sys.platform != "darwin"
                                       else "spawn")


def ordered_map(fn: Callable[[Any, T], R], items: Sequence[T], workers: int = 1,
                shared: Any = None, desc: str | None = None) -> list[R]:
    """``[fn(shared, item) for item in items]``, over ``workers`` processes in chunks.

    ``fn`` must be a module-level function. A progress bar is shown on a terminal only.
    """
    items = list(items)
    workers = max(1, min(int(workers), len(items)))
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=None, leave=False)
    try:
        if workers == 1:
            results = []
            for item in items:
                results.append(fn(shared, item))
                bar.update()
            return results
        chunk = max(1, math.ceil(len(items) / (workers * CHUNKS_PER_WORKER)))
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(),
                                   initializer=_set_shared, initargs=(shared,))
        try:
            results = []
            for result in pool.map(_call, [fn] * len(items), items, chunksize=chunk):
                results.append(result)
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results
    finally:
        bar.close()
