"""arbg.runtime.tune_malloc: glibc's thresholds set, or left alone when asked."""

import ctypes.util

import pytest

from arbg.runtime import tune_malloc


def test_tune_malloc_sets_the_thresholds_on_glibc(monkeypatch):
    monkeypatch.delenv("ARBG_NO_MALLOC_TUNING", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    if ctypes.util.find_library("c") != "libc.so.6":
        pytest.skip("not glibc")
    assert tune_malloc() is True


@pytest.mark.parametrize("var", ["ARBG_NO_MALLOC_TUNING", "MALLOC_MMAP_THRESHOLD_"])
def test_tune_malloc_leaves_malloc_alone_when_asked(monkeypatch, var):
    monkeypatch.setenv(var, "1")
    assert tune_malloc() is False


def test_fit_threads_caps_at_the_free_cores(monkeypatch):
    import torch

    from arbg.runtime import fit_threads, free_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("ARBG_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        n = free_cores(0.0)
        assert free_cores(1e6) == 1 and free_cores(n - 1.0) == 1 or n == 1
        torch.set_num_threads(max(1, n))
        assert fit_threads(load=float(n)) in (1, None)  # every core busy: one thread
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("ARBG_THREADS", "2")
        fit_threads(load=1e6)
        assert torch.get_num_threads() == 2  # asked for: kept
        monkeypatch.delenv("ARBG_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert fit_threads(load=1e6) is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
