"""Where parallel work runs: in this process, on a local Dask cluster, or on any Dask cluster.

arbg parallelises two kinds of work with ``dask.distributed``: whole MD runs of a corpus
(:func:`arbg.data.corpora.run_corpus`, one task per sequence) and batched energy evaluation
(:class:`arbg.chem.energy.OpenMMEnergy`, one task per chunk of conformations). Both take an
:class:`Engine`, opened from a :class:`ClusterConfig` by :func:`open_engine`:

- no scheduler and ``workers == 1``: no Dask at all, everything runs in this process (the
  fastest for one core: no task overhead);
- no scheduler and ``workers > 1``: a ``LocalCluster`` of ``workers`` single-threaded worker
  processes on this machine, bound to 127.0.0.1 only, closed with the engine;
- a scheduler address (``ClusterConfig.scheduler`` or the environment variable
  ``ARBG_DASK_SCHEDULER``): the work goes to that running Dask cluster (``dask scheduler`` /
  ``dask worker`` processes, ``dask-jobqueue`` on SLURM, ...; see docs/cluster.md). Workers
  must see the same file system paths as the client for corpora (they write the results).

Energy code finds the engine of the running command through :func:`use_engine` /
:func:`active_engine` (a context variable), so library functions that evaluate energies need no
extra argument. Worker processes keep per-thread caches (:func:`worker_cache`) for objects that
must never travel (OpenMM Contexts): tasks carry specs, keys and positions only.

This module is the bottom layer: it imports neither OpenMM nor torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ENV_SCHEDULER = "ARBG_DASK_SCHEDULER"
LOOPBACK = "127.0.0.1"
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_ADDRESS = re.compile(r"^(?:(tcp|tls|inproc|ucx|ws|wss)://)?[^\s/:]+(?::\d{1,5})?$")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the parallel work of a command runs.

    Attributes
    ----------
    workers : run the work (corpus MD, energy evaluation) on a local Dask cluster of this many
        single-threaded worker processes, loopback only (1: in this process, no Dask). Ignored
        with a scheduler, whose cluster has its own workers.
    scheduler : send the work to the running Dask scheduler at this address (tcp://HOST:PORT),
        by default the one in $ARBG_DASK_SCHEDULER when set (see docs/cluster.md).
    connect_timeout_s : how long to wait for the scheduler (s).
    """

    workers: int = 1
    scheduler: str | None = field(default=None, metadata={"metavar": "ADDRESS"})
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"--workers must be an integer >= 1, got {self.workers!r}")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {self.connect_timeout_s}")
        address = self.resolved_scheduler()
        if address is not None and not _ADDRESS.match(address):
            where = "--scheduler" if self.scheduler else ENV_SCHEDULER
            raise ValueError(
                f"{where}: {address!r} is not a Dask scheduler address (tcp://HOST:PORT)"
            )

    def resolved_scheduler(self) -> str | None:
        """The scheduler address to use: the option, else ``ARBG_DASK_SCHEDULER``, else None."""
        address = self.scheduler or os.environ.get(ENV_SCHEDULER, "").strip() or None
        return address


class Engine:
    """A place to run tasks: in this process (``client is None``) or on a Dask cluster.

    Attributes
    ----------
    client : ``distributed.Client`` or None (in-process).
    cluster : the ``LocalCluster`` this engine started (closed with it), or None.
    description : one line for logs ("in-process", "LocalCluster of 2 workers", ...).
    """

    def __init__(self, client=None, cluster=None, description: str = "in-process"):
        self.client = client
        self.cluster = cluster
        self.description = description

    @property
    def distributed(self) -> bool:
        """True when tasks go to Dask workers."""
        return self.client is not None

    @property
    def n_workers(self) -> int:
        """Workers (threads) available now: 1 in-process, else the cluster's total threads."""
        return max(1, sum(self.worker_threads().values()))

    def worker_threads(self) -> dict[str, int]:
        """Threads of each worker now, by address ({} in-process; one scheduler round trip)."""
        if self.client is None:
            return {}
        return dict(self.client.nthreads())

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard URL when the scheduler serves one, else None."""
        if self.client is None:
            return None
        try:
            services = self.client.scheduler_info(n_workers=0).get("services", {})
        except Exception:  # pragma: no cover - scheduler gone
            return None
        if "dashboard" not in services or not self._scheduler_has_bokeh():
            return None  # the scheduler's HTTP server without the dashboard pages
        return self.client.dashboard_link

    def _scheduler_has_bokeh(self) -> bool:
        def probe(dask_scheduler=None) -> bool:  # pickled by value: no arbg on the scheduler
            import importlib.util

            return importlib.util.find_spec("bokeh") is not None

        try:
            return bool(self.client.run_on_scheduler(probe))
        except Exception:  # pragma: no cover - scheduler gone or refusing
            return False

    def close(self) -> None:
        """Close the client and a cluster this engine started."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()
        self.client = self.cluster = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine({self.description})"


def open_engine(config: ClusterConfig | None = None) -> Engine:
    """Open the engine a :class:`ClusterConfig` asks for (see the module docstring).

    Raises ValueError naming ``--scheduler`` / ``ARBG_DASK_SCHEDULER`` when the scheduler
    cannot be reached. Close the engine (or use it as a context manager) when done.
    """
    config = config or ClusterConfig()
    address = config.resolved_scheduler()
    if address is not None:
        return _connect(address, config)
    if config.workers == 1:
        return Engine()
    return local_cluster(config.workers)


def _connect(address: str, config: ClusterConfig) -> Engine:
    from distributed import Client

    where = "--scheduler" if config.scheduler else ENV_SCHEDULER
    try:
        client = Client(address, timeout=config.connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ValueError(f"{where}: cannot reach the Dask scheduler {address!r}: {e}") from e
    engine = Engine(client, None, f"Dask scheduler {address}")
    if config.workers != 1:
        log.info("%s: --workers %d ignored (the cluster has its own)", where, config.workers)
    log.info("%s with %d worker thread(s) now", engine.description, engine.n_workers)
    return engine


def local_cluster(workers: int) -> Engine:
    """An engine on a new LocalCluster of `workers` single-threaded processes (loopback only).

    :func:`open_engine` runs one worker in-process instead; this starts a cluster even for one
    (benchmarks of the Dask overhead).
    """
    from distributed import Client, LocalCluster

    with single_thread_env():  # inherited by the worker processes
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host=LOOPBACK,
            dashboard_address=f"{LOOPBACK}:0",  # loopback, a free port
            env=dict(SINGLE_THREAD_ENV),
        )
    try:
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    return Engine(client, cluster, f"LocalCluster of {workers} workers on {LOOPBACK}")


@contextlib.contextmanager
def single_thread_env() -> Iterator[None]:
    """Set OMP/OpenBLAS/MKL to one thread in ``os.environ`` for the duration (for children).

    OPENMM_CPU_THREADS is left alone: arbg's OpenMM contexts ask for one thread themselves.
    """
    old = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- the engine of the running command

_ACTIVE: contextvars.ContextVar[Engine | None] = contextvars.ContextVar("arbg_engine", default=None)


@contextlib.contextmanager
def use_engine(engine: Engine | None) -> Iterator[Engine | None]:
    """Make `engine` the one :func:`active_engine` returns inside the block."""
    token = _ACTIVE.set(engine)
    try:
        yield engine
    finally:
        _ACTIVE.reset(token)


def active_engine() -> Engine | None:
    """The engine set by :func:`use_engine` (None: evaluate in this process)."""
    engine = _ACTIVE.get()
    return engine if engine is not None and engine.distributed else None


# -- worker-local state

_LOCAL = threading.local()


def worker_cache() -> dict:
    """A dict private to this worker thread (lives as long as the worker process).

    For objects that must not be pickled or shared between threads, e.g. one OpenMM Context
    per worker and per system, keyed by the system's hash.
    """
    cache = getattr(_LOCAL, "cache", None)
    if cache is None:
        cache = _LOCAL.cache = {}
    return cache
