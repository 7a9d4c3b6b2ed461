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
