"""nnU-Net's validation with one worker thread instead of one spawned process.

nnU-Net's ``perform_actual_validation`` exports every prediction in a pool of
``default_num_processes`` (``nnUNet_def_n_proc``) spawned processes, and
``compute_metrics_on_folder`` scores the exported masks in a second such pool. A spawned process
is a fresh interpreter that imports torch and nnU-Net before its first job: several seconds of
CPU per pool, twice per validation — most of the validation of a short run on a CPU (the tests,
the demo, the benchmarks), where the jobs themselves take a fraction of a second.

When the user asks for one worker (``nnUNet_def_n_proc=1``) the ``Xfer*`` trainers give nnU-Net
a pool of one *thread* for both: the same functions on the same arguments, one job at a time in
the same order, with no interpreter to start. nnU-Net's code runs unchanged; only the
``multiprocessing`` name its two modules look the pool up under is swapped for the call and
restored after it. Any other value (nnU-Net's default is 8) keeps nnU-Net's process pools.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
from collections.abc import Iterator
from types import ModuleType


class _ThreadPoolContext:
    """What ``multiprocessing.get_context(...)`` gives inside the swap: pools of threads."""

    @staticmethod
    def Pool(processes: int | None = None, *args, **kwargs) -> multiprocessing.pool.ThreadPool:  # noqa: N802
        return multiprocessing.pool.ThreadPool(processes, *args, **kwargs)


class _ThreadedMultiprocessing:
    """Stands in for the ``multiprocessing`` module: every context's ``Pool`` is a thread pool,
    anything else is the real module's."""

    def get_context(self, method: str | None = None) -> _ThreadPoolContext:
        return _ThreadPoolContext()

    def __getattr__(self, name: str):
        return getattr(multiprocessing, name)


def validation_modules() -> tuple[ModuleType, ...]:
    """The nnU-Net modules whose pools validation uses: the trainer's and the scorer's."""
    import nnunetv2.evaluation.evaluate_predictions as scorer
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer
    return trainer, scorer


def one_worker_requested() -> bool:
    """Whether nnU-Net was asked for one worker process (``nnUNet_def_n_proc=1``)."""
    from nnunetv2.configuration import default_num_processes
    return default_num_processes == 1


@contextlib.contextmanager
def pools_as_threads(modules: tuple[ModuleType, ...] | None = None) -> Iterator[None]:
    """Within the block, ``multiprocessing.get_context(...).Pool(n)`` in ``modules`` (default:
    :func:`validation_modules`) makes a pool of ``n`` threads; restored on the way out."""
    modules = validation_modules() if modules is None else modules
    # a module that does not look its pools up under this name (another nnU-Net version) keeps
    # whatever it does
    saved = [(m, m.multiprocessing) for m in modules
             if getattr(m, "multiprocessing", None) is multiprocessing]
    try:
        for m, _ in saved:
            m.multiprocessing = _ThreadedMultiprocessing()
        yield
    finally:
        for m, real in saved:
            m.multiprocessing = real
