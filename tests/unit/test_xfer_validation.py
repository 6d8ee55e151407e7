"""The trainers' validation pools: one thread instead of one spawned process when
nnUNet_def_n_proc=1 (nnunet_xfer/trainers/xfer_validation.py). The real nnUNetv2_train path is
checked in tests/integration/test_trainers.py::test_scratch_run_outputs_subset_and_predict."""
from __future__ import annotations

import os
import threading

import pytest
from nnunetv2.utilities.file_path_utilities import check_workers_alive_and_busy

from nnunet_xfer.trainers import xfer_validation as xv


def _where(x: int) -> tuple[int, int, int]:
    return os.getpid(), threading.get_ident(), 2 * x


def test_pools_in_the_block_are_threads_of_this_process_and_the_modules_are_restored():
    modules = xv.validation_modules()
    real = [m.multiprocessing for m in modules]
    with xv.pools_as_threads():
        for m in modules:
            # what nnU-Net's perform_actual_validation / compute_metrics_on_folder do
            with m.multiprocessing.get_context("spawn").Pool(1) as pool:
                workers = list(pool._pool)
                results = [pool.starmap_async(_where, ((3,), (4,)))]
                assert [w.is_alive() for w in workers] == [True]
                ((pid, ident, six), (_p, _i, eight)) = results[0].get()
                assert not check_workers_alive_and_busy(pool, workers, results, 0)
            assert pid == os.getpid() and ident != threading.get_ident() and (six, eight) == (6, 8)
            assert m.multiprocessing.cpu_count() == real[0].cpu_count()  # other names pass through
    assert [m.multiprocessing for m in modules] == real
    with real[0].get_context("spawn").Pool(1) as pool:  # outside: nnU-Net's process pool again
        assert type(pool).__name__ == "Pool"


def test_the_modules_are_restored_when_validation_fails():
    modules = xv.validation_modules()
    real = [m.multiprocessing for m in modules]
    with pytest.raises(RuntimeError, match="validation failed"):
        with xv.pools_as_threads():
            raise RuntimeError("validation failed")
    assert [m.multiprocessing for m in modules] == real


def test_threads_only_when_one_worker_is_asked_for(monkeypatch):
    import nnunetv2.configuration as configuration
    monkeypatch.setattr(configuration, "default_num_processes", 1)
    assert xv.one_worker_requested()
    monkeypatch.setattr(configuration, "default_num_processes", 8)  # nnU-Net's default
    assert not xv.one_worker_requested()


def test_a_module_without_the_multiprocessing_name_is_left_alone():
    import types
    other = types.ModuleType("other_nnunet_version")  # pools looked up some other way
    with xv.pools_as_threads((other,)):
        assert not hasattr(other, "multiprocessing")
    assert not hasattr(other, "multiprocessing")
