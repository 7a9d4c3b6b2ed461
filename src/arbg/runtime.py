"""Process settings for CPU speed: glibc's malloc thresholds.

PyTorch on the CPU allocates its tensors with ``malloc``. glibc serves a block above its mmap
threshold (128 kB at start, raised at run time up to 32 MB as large blocks are freed) with a
fresh ``mmap``, and every 4 kB page of it faults on first touch. The sampler and the trainer
allocate tensors of megabytes at every token and every step (logits [batch, bins], their
float64 cumulative sums, the output head's gradients), so whether those come back from the heap
or as fresh pages depends on what the process allocated before: the tiny preset's sampler
(``generate``, batch 256, one thread) ran at 164-168 samples/s in three fresh processes and at
281-288 with the thresholds raised (docs/speed.md). Raising the thresholds
keeps such blocks on the heap, where they are reused step after step.

:func:`tune_malloc` is called by the ``arbg`` command at start; the Python API leaves the
process as it is (call it yourself). Setting ``MALLOC_MMAP_THRESHOLD_`` in the environment, or
``ARBG_NO_MALLOC_TUNING=1``, leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["tune_malloc"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)


def tune_malloc(mmap_threshold_mb: int = 64, trim_threshold_mb: int = 256) -> bool:
    """Serve blocks below ``mmap_threshold_mb`` from the heap and keep up to
    ``trim_threshold_mb`` of freed memory at its top for reuse (glibc only).

    Returns True when the thresholds were set; False on another C library, or when the
    environment asks to leave malloc alone (``MALLOC_MMAP_THRESHOLD_`` or
    ``ARBG_NO_MALLOC_TUNING`` set). The cost is memory: freed blocks stay with the process
    instead of going back to the system at once.
    """
    if os.environ.get("ARBG_NO_MALLOC_TUNING") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold_mb << 20) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb << 20) == 1 and ok
    log.debug(
        "malloc: mmap threshold %d MB, trim threshold %d MB (%s)",
        mmap_threshold_mb,
        trim_threshold_mb,
        "set" if ok else "refused",
    )
    return ok
