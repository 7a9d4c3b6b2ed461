"""torch.distributed glue of training: rank and world size, initialisation from torchrun's
environment, the output-directory lock taken by rank 0."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from arbg.files import lock_dir, recover

__all__ = ["init_distributed", "locked_output", "rank_and_world_size"]


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of torch.distributed; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed from torchrun's environment (no-op for single processes).

    Returns (rank, world_size); gloo on the CPU, NCCL when CUDA is available.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return rank_and_world_size()


@contextlib.contextmanager
def locked_output(out_dir: str | Path, wait: bool = False) -> Iterator[None]:
    """Rank 0 locks ``out_dir`` (:func:`arbg.files.lock_dir`) and finishes an interrupted
    checkpoint commit (:func:`arbg.files.recover`) before training reads ``last``."""
    rank, world = rank_and_world_size()
    if rank != 0:
        if world > 1:
            dist.barrier()  # rank 0 recovers first
        yield
        return
    with lock_dir(out_dir, wait=wait):
        recover(out_dir)
        if world > 1:
            dist.barrier()
        yield
