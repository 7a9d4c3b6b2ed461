"""Dask engine: a real scheduler and two workers on loopback, a worker killed mid-corpus."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from arbg.cli import main
from arbg.cluster import ENV_SCHEDULER, ClusterConfig, active_engine, open_engine, use_engine
from arbg.data.corpora import CorpusConfig, run_corpus
from arbg.data.loaders import load_corpus

SRC = str(Path(__file__).resolve().parents[1] / "src")
SEQS = ["AA", "GA", "GG"]
# 100 frames per sequence in chunks of 10: about 2 s of MD each, long enough to kill one
CFG = CorpusConfig(ns=0.1, fractions=(1.0, 0.0, 0.0), seed=0, warmup_ps=0.2, chunk_frames=10)
CLI_CFG = ["--ns", "0.1", "--warmup-ps", "0.2", "--chunk-frames", "10", "--split", "1", "0", "0"]
VOLATILE = {"wall_s"}  # how long it took: the only field that differs between two runs


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    env.pop(ENV_SCHEDULER, None)
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,  # its own process group: killed as a whole
        )


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _wait_for(predicate, timeout: float, what: str, procs=()) -> None:
    t0 = time.time()
    while not predicate():
        for p in procs:
            assert p.poll() is None, f"{p.args} exited ({p.returncode}) while waiting for {what}"
        assert time.time() - t0 < timeout, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes, loopback only; all stopped after."""
    sched_file = tmp_path / "scheduler.json"
    procs = {}
    try:
        procs["scheduler"] = _start(
            [
                "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
                "--idle-timeout",
                "600",  # exits by itself if this test ever leaked it
            ],
            tmp_path / "scheduler.log",
        )
        _wait_for(sched_file.exists, 60, "the scheduler file", procs.values())
        _wait_for(lambda: "address" in sched_file.read_text(), 10, "the scheduler address")
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(2):
            procs[f"worker{i}"] = _start(
                [
                    "dask",
                    "worker",
                    address,
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--name",
                    f"w{i}",
                    "--local-directory",
                    str(tmp_path / f"w{i}"),
                    "--death-timeout",
                    "60",
                ],
                tmp_path / f"worker{i}.log",
            )
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield address, procs
    finally:
        for proc in procs.values():
            _stop(proc)


def _same_corpus(a: Path, b: Path) -> None:
    """Same frames, topologies, metadata (but run times) and manifest entries."""
    for seq in SEQS:
        with (
            np.load(a / "sequences" / f"{seq}.npz") as za,
            np.load(b / "sequences" / f"{seq}.npz") as zb,
        ):
            assert za.files == zb.files
            np.testing.assert_array_equal(za["positions"], zb["positions"])
        assert (a / "sequences" / f"{seq}.pdb").read_text() == (
            b / "sequences" / f"{seq}.pdb"
        ).read_text()
        ma, mb = (json.loads((d / "sequences" / f"{seq}.json").read_text()) for d in (a, b))
        assert {k: v for k, v in ma.items() if k not in VOLATILE} == {
            k: v for k, v in mb.items() if k not in VOLATILE
        }
    man_a, man_b = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for m in (man_a, man_b):
        for e in m["sequences"].values():
            e.pop("wall_s")
    assert man_a == man_b


def test_corpus_through_scheduler_survives_killed_worker(tmp_path, dask_cluster):
    address, procs = dask_cluster
    ref = tmp_path / "ref"
    m_ref = run_corpus(ref, SEQS, CFG, progress=False)  # in this process, no Dask
    assert m_ref["totals"]["done"] == 3

    out = tmp_path / "dist"
    cmd = ["arbg.cli", "corpus", "--sequences", ",".join(SEQS), *CLI_CFG, "--out", str(out)]
    client = _start([*cmd, "--scheduler", address, "--quiet"], tmp_path / "client.log")
    try:

        def under_way() -> list[str]:  # sequences with a chunk on disk, not finished
            return [
                s
                for s in SEQS
                if (out / "work" / s / "progress.json").exists()
                and not (out / "sequences" / f"{s}.json").exists()
            ]

        # both workers busy (one sequence each), then one of them dies mid-sequence
        _wait_for(lambda: len(under_way()) == 2, 120, "two sequences under way", [client])
        _stop(procs["worker0"], signal.SIGKILL)
        assert procs["worker0"].returncode == -signal.SIGKILL
        assert len(under_way()) >= 1  # a sequence lost its worker in flight
        assert client.wait(timeout=300) == 0, (tmp_path / "client.log").read_text()[-3000:]
    finally:
        _stop(client)
    m = json.loads((out / "manifest.json").read_text())
    assert m["totals"]["done"] == 3 and m["totals"]["failed"] == 0
    assert not (out / "work").exists()
    _same_corpus(out, ref)  # identical to the local run, the killed sequence included
    assert procs["worker1"].poll() is None  # the survivor finished the job

    # energies of the corpus frames on the surviving worker equal the in-process ones
    import arbg.chem.energy as E

    corpus = load_corpus(out)
    ds = corpus.dataset("AA")
    expected = ds.system.reduced_energy(ds.positions)
    with open_engine(ClusterConfig(scheduler=address)) as engine, use_engine(engine):
        assert engine.n_workers == 1 and engine.dashboard_link is None  # --no-dashboard
        energy = E.OpenMMEnergy(ds.system.create_openmm_system(), ds.system.kT)
        energy.sec_per_eval = E.MIN_PARALLEL_S  # as if slow: distribute these 100 frames
        u = energy(ds.positions)
        assert energy.n_tasks >= 1
    np.testing.assert_array_equal(u, expected)

    # resuming through the scheduler named by the environment: nothing left to run
    os.environ[ENV_SCHEDULER] = address
    try:
        assert main(["corpus", "--out", str(out), "--quiet"]) == 0
    finally:
        del os.environ[ENV_SCHEDULER]
    _same_corpus(out, ref)


def test_cluster_config_and_engine_selection(monkeypatch):
    monkeypatch.delenv(ENV_SCHEDULER, raising=False)
    with open_engine(ClusterConfig()) as engine:  # the default: in this process
        assert not engine.distributed and engine.n_workers == 1
        assert engine.dashboard_link is None
        with use_engine(engine):
            assert active_engine() is None  # nothing to distribute to
    with pytest.raises(ValueError, match="--workers"):
        ClusterConfig(workers=0)
    with pytest.raises(ValueError, match="--scheduler.*not a Dask scheduler address"):
        ClusterConfig(scheduler="tcp://127.0.0.1:8786/extra path")
    monkeypatch.setenv(ENV_SCHEDULER, "tcp://127.0.0.1:9")
    assert ClusterConfig().resolved_scheduler() == "tcp://127.0.0.1:9"
    assert ClusterConfig(scheduler="tcp://127.0.0.1:7").resolved_scheduler() == (
        "tcp://127.0.0.1:7"
    )
    with pytest.raises(ValueError, match=f"{ENV_SCHEDULER}: cannot reach the Dask scheduler"):
        open_engine(ClusterConfig(connect_timeout_s=1.0))
    monkeypatch.setenv(ENV_SCHEDULER, "")
    assert ClusterConfig().resolved_scheduler() is None


def test_build_is_the_same_whatever_the_threads_and_run():
    """Workers on other nodes build a sequence exactly as this process does."""
    code = (
        "import hashlib; from arbg.chem.systems import build_system; "
        "from arbg.data.corpora import CorpusConfig; "
        "s = build_system(CorpusConfig().spec('GYDPETGTWG')); "
        "print(hashlib.sha256(s.positions.tobytes()).hexdigest())"
    )
    digests = set()
    for threads in ("1", "3"):
        env = dict(_env(), OPENMM_CPU_THREADS=threads)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-2000:]
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_task_waits_for_a_run_of_its_sequence_then_skips_it(tmp_path, monkeypatch):
    """A resumed client's task meets a task of the killed client still running: it waits for
    that run's lock instead of failing, then finds the sequence finished (no second MD)."""

    import arbg.data.corpora as C

    cfg = CorpusConfig(ns=0.004, fractions=(1.0, 0.0, 0.0), warmup_ps=0.2, chunk_frames=2)
    out = tmp_path / "c"
    done = run_corpus(out, ["GG"], cfg, progress=False)["sequences"]["GG"]
    monkeypatch.setattr(C, "LOCK_POLL_S", 0.05)
    monkeypatch.setattr(C, "run_md", lambda *a, **k: pytest.fail("finished: no MD expected"))
    result = {}
    lock = out / "locks" / "GG.lock"
    with C._file_lock(lock, "the earlier task"):
        with pytest.raises(ValueError, match="being run by another process"):
            C.run_sequence(out, "GG", "train", cfg)  # the CLI's in-process runs do not wait
        task = threading.Thread(
            target=lambda: result.update(C._run_in_worker(str(out), "GG", "train", cfg.to_dict()))
        )
        task.start()
        time.sleep(0.5)
        assert task.is_alive()  # waiting for the lock
    task.join(timeout=30)
    assert not task.is_alive() and result == done


def test_cli_reports_bad_cluster_options(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ENV_SCHEDULER, raising=False)
    out = tmp_path / "c"
    base = ["corpus", "--sequences", "AA", "--out", str(out), "--quiet"]
    with pytest.raises(SystemExit) as e:  # the parser's range check
        main([*base, "--workers", "0"])
    assert e.value.code == 2
    assert "--workers: got 0; expected an integer >= 1" in capsys.readouterr().err
    assert main([*base, "--scheduler", "tcp://127.0.0.1:1/x"]) == 2
    assert "not a Dask scheduler address" in capsys.readouterr().err
    monkeypatch.setenv(ENV_SCHEDULER, "not an address")
    assert main(["sample", "ckpt", "--out", str(tmp_path / "s")]) == 2
    assert f"{ENV_SCHEDULER}: 'not an address'" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "s").exists()


def test_failed_task_is_recorded_and_the_rest_finish(tmp_path):
    """A sequence whose task raises on a Dask worker is marked failed; the others complete."""
    cfg = CorpusConfig(ns=0.004, fractions=(1.0, 0.0, 0.0), warmup_ps=0.2, chunk_frames=2)
    out = tmp_path / "c"
    bad = out / "work" / "GG"
    bad.mkdir(parents=True)  # a foreign run in the way: run_md refuses other settings
    (bad / "metadata.json").write_text(json.dumps({"seed": -1}))
    m = run_corpus(out, ["AA", "GG"], cfg, workers=2, progress=False, poll_s=0.5)
    assert m["sequences"]["AA"]["status"] == "done"
    assert m["sequences"]["GG"]["status"] == "failed"
    assert "holds a run with different" in m["sequences"]["GG"]["error"]
    assert m["totals"]["done"] == 1 and m["totals"]["failed"] == 1


_LIVE = {"now": 0, "max": 0}
_LIVE_LOCK = threading.Lock()


def _counting_task(out_dir: str, sequence: str, split: str, config: dict) -> dict:
    with _LIVE_LOCK:
        _LIVE["now"] += 1
        _LIVE["max"] = max(_LIVE["max"], _LIVE["now"])
    time.sleep(0.2)
    with _LIVE_LOCK:
        _LIVE["now"] -= 1
    return {"sequence": sequence}


@pytest.mark.parametrize("limit", [1, None])
def test_corpus_tasks_fed_at_most_max_in_flight(tmp_path, limit):
    """On a cluster of fixed size the client feeds tasks one per free thread, longest first."""
    from distributed import Client, LocalCluster

    from arbg.data.corpora import run_on_dask

    todo = ["AAA", "AA", "GA", "GG"]
    _LIVE.update(now=0, max=0)
    recorded = []
    tracker = type("Tracker", (), {"update": lambda self, partial: None})()
    cfg = CorpusConfig(ns=0.004, fractions=(1.0, 0.0, 0.0))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster:
        with Client(cluster, set_as_default=False) as client:
            run_on_dask(
                tmp_path,
                todo,
                dict.fromkeys(todo, "train"),
                cfg,
                client,
                _counting_task,
                lambda seq, entry, error: recorded.append((seq, entry, error)),
                tracker,
                0.05,
                max_in_flight=limit,
            )
    assert sorted(s for s, _, _ in recorded) == sorted(todo)
    assert all(e == {"sequence": s} and err is None for s, e, err in recorded)
    assert _LIVE["max"] == (1 if limit == 1 else 2)
    if limit == 1:
        assert [s for s, _, _ in recorded] == todo  # one at a time, in the given order
