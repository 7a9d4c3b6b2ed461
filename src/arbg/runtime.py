"""Process settings for CPU speed: glibc's malloc thresholds and the intra-op thread count.

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

Threads: PyTorch starts one intra-op thread per core. When another process keeps some cores
busy, its threads wait for each other at every operation (OpenMP barriers) and a sampler that
makes thousands of small operations per batch slows down by an order of magnitude: the tiny
sampler fell from 153 to 11 samples/s on 2 cores with one core busy, where one thread kept
153/s. :func:`fit_threads` (called by the ``arbg`` command) caps the intra-op threads at the
cores that are free by the load average; ``OMP_NUM_THREADS``, ``ARBG_THREADS`` or a
``torch.set_num_threads`` of your own are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "StopRequest", "fit_threads", "free_cores", "stop_signals", "tune_malloc"]

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


def free_cores(load: float | None = None) -> int:
    """Cores this process may use that other processes do not keep busy: the cores of its
    affinity mask minus the 1-minute load average (rounded), at least 1."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover (no load average)
            return n
    return max(1, min(n, n - int(round(load))))


def fit_threads(load: float | None = None) -> int | None:
    """Cap torch's intra-op threads at :func:`free_cores`; returns the new count, or None when
    nothing changed (``ARBG_THREADS`` sets the count itself; ``OMP_NUM_THREADS`` leaves it)."""
    import torch

    if os.environ.get("ARBG_THREADS"):
        n = max(1, int(os.environ["ARBG_THREADS"]))
    elif os.environ.get("OMP_NUM_THREADS"):
        return None
    else:
        n = min(torch.get_num_threads(), free_cores(load))
    if n == torch.get_num_threads():
        return None
    torch.set_num_threads(n)
    log.info("threads: %d intra-op thread(s) (cores free by the load average)", n)
    return n


# --------------------------------------------------------------------------------------------------
# graceful stops: SIGTERM (a batch scheduler's stop) and the first Ctrl-C end the loop at a safe
# point, the work is saved, then :class:`Interrupted` is raised


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal, raised after the work was saved; ``signum`` is the signal
    (the ``arbg`` command exits with ``128 + signum``)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """Set by :func:`stop_signals`' handler: ``signum`` is the first stop signal received."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextlib.contextmanager
def stop_signals(
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
) -> Iterator[StopRequest]:
    """Catch ``signals`` for the block: the first one only sets the yielded request (the loop
    stops at its next safe point); a second Ctrl-C raises ``KeyboardInterrupt`` at once. Outside
    the main thread (signals cannot be caught there) the request is never set."""
    req = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield req
        return

    def handler(signum, frame):
        if req.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if req.signum is None:
            req.signum = signum
            log.warning(
                "%s received: stopping at the next safe point (the work is saved)",
                signal.Signals(signum).name,
            )

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield req
    finally:
        for s, h in old.items():
            signal.signal(s, h)
