"""Crash safety and concurrency (issue 15).

Kill-at-every-step: :func:`arbg.files._after_write` runs after every durable write, rename and
removal; the tests make it raise after the k-th one (for every k until a run completes), which
leaves the directory exactly as a ``kill -9`` at that moment would (temporaries, half-applied
commits, a released lock), then run again without the fault and compare with an uninterrupted
run: nothing lost, nothing duplicated. Concurrency: a second process holding the lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import arbg.files
from arbg.files import Commit, DirectoryLocked, lock_dir, recover

ASSETS = Path(__file__).resolve().parents[1] / "src" / "arbg" / "assets" / "aldp"


class Killed(BaseException):
    """Stands for kill -9 (a BaseException: no library code handles it)."""


def fault_after(monkeypatch, k: int) -> list[str]:
    """Make the k-th durable step (1-based) raise :class:`Killed`; returns the step log."""
    steps: list[str] = []

    def hook(what: str) -> None:
        steps.append(what)
        if len(steps) == k:
            raise Killed(what)

    monkeypatch.setattr(arbg.files, "_after_write", hook)
    return steps


def no_fault(monkeypatch) -> None:
    monkeypatch.setattr(arbg.files, "_after_write", lambda what: None)


def leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith((".arbg-staged-", ".arbg-old-", ".arbg-commit")) or p.suffix == ".tmp"
    )


def kill_every_step(monkeypatch, attempt, finish, check, max_k: int = 200) -> int:
    """For k = 1, 2, ...: ``attempt()`` with a fault at step k, then ``finish()`` without a
    fault and ``check()``; stops at the first k the attempt survives. Returns the step count."""
    for k in range(1, max_k):
        steps = fault_after(monkeypatch, k)
        try:
            attempt()
        except Killed:
            no_fault(monkeypatch)
            finish()
            check(f"killed after step {k} ({steps[-1]})")
            continue
        no_fault(monkeypatch)
        check("no kill")
        return k - 1
    raise AssertionError("the run never completed")


# --------------------------------------------------------------------------------------------------
# the commit mechanism itself


def test_commit_is_all_or_nothing_at_every_step(tmp_path, monkeypatch):
    root = tmp_path / "d"
    root.mkdir()
    (root / "a.txt").write_text("old a")
    (root / "sub").mkdir()
    (root / "sub" / "b.json").write_text('"old b"')
    (root / "gone.txt").write_text("delete me")
    (root / "ckpt").mkdir()
    (root / "ckpt" / "w").write_text("old w")

    def attempt():
        c = Commit(root)
        c.write_bytes("a.txt", b"new a")
        c.write_json("sub/b.json", "new b")
        d = c.stage_dir("ckpt")
        (d / "w").write_text("new w")
        c.delete("gone.txt")
        c.commit()

    def state():
        return (
            (root / "a.txt").read_text(),
            json.loads((root / "sub" / "b.json").read_text()),
            (root / "ckpt" / "w").read_text(),
            (root / "gone.txt").exists(),
        )

    old, new = ("old a", "old b", "old w", True), ("new a", "new b", "new w", False)
    snapshot = tmp_path / "snap"
    shutil.copytree(root, snapshot)
    seen = set()
    for k in range(1, 50):
        shutil.rmtree(root)
        shutil.copytree(snapshot, root)
        fault_after(monkeypatch, k)
        try:
            attempt()
            break
        except Killed:
            no_fault(monkeypatch)
            recover(root, subdirs=("sub",))
            assert state() in (old, new), k
            assert not leftovers(root), leftovers(root)
            seen.add(state())
    assert seen == {old, new}  # kills both before and after the commit point were tried


# --------------------------------------------------------------------------------------------------
# md


def test_md_killed_between_every_pair_of_writes_recovers(tmp_path, monkeypatch, aldp):
    from arbg.chem.md import MDConfig, load_md_frames, run_md

    cfg = dict(warmup_ps=0.5, chunk_frames=2, seed=5)
    ref = run_md(aldp, tmp_path / "ref", MDConfig(ns=0.005, **cfg), progress=False)
    ref_frames = load_md_frames(ref)
    out = tmp_path / "run"

    def attempt():  # extend a 2-frame run to 5 frames (chunks 1 and 2, a partial one)
        run_md(aldp, out, MDConfig(ns=0.005, **cfg), progress=False)

    def finish():
        run_md(aldp, out, MDConfig(ns=0.005, **cfg), progress=False)

    def check(when):
        got = load_md_frames(out)
        assert got.shape == ref_frames.shape and np.array_equal(got, ref_frames), when
        assert json.loads((out / "progress.json").read_text()) == {"n_frames": 5}, when
        assert not leftovers(out), (when, leftovers(out))
        shutil.rmtree(out)
        run_md(aldp, out, MDConfig(ns=0.002, **cfg), progress=False)

    shutil.rmtree(out, ignore_errors=True)
    run_md(aldp, out, MDConfig(ns=0.002, **cfg), progress=False)
    n = kill_every_step(monkeypatch, attempt, finish, check)
    print(f"md: killed after each of {n} steps")
    assert n >= 15  # metadata, and per chunk: 3 staged + journal + 3 moves + journal removal


# --------------------------------------------------------------------------------------------------
# sample


@pytest.fixture(scope="module")
def parts():
    from arbg.train.checkpoints import load_checkpoint

    return load_checkpoint(ASSETS / "checkpoint")


def _sample(parts, out, seed):
    from arbg.sampling.config import SampleConfig
    from arbg.sampling.runs import run_sampling

    return run_sampling(parts, out, SampleConfig(n=6, seed=seed, batch_size=6), energy=parts.system)


def test_sample_killed_between_every_pair_of_writes_recovers(tmp_path, monkeypatch, parts):
    ref = tmp_path / "ref"
    _sample(parts, ref, 0)
    _sample(parts, ref, 1)
    with np.load(ref / "samples.npz") as f:
        ref_arrays = {k: f[k] for k in f.files}
    ref_summary = json.loads((ref / "summary.json").read_text())
    out = tmp_path / "run"

    def attempt():
        _sample(parts, out, 1)

    def finish():  # the user re-runs the extension; a committed one refuses the used seed
        try:
            _sample(parts, out, 1)
        except ValueError as e:
            assert "already used" in str(e)

    def check(when):
        with np.load(out / "samples.npz") as f:
            for k, v in ref_arrays.items():
                assert np.array_equal(f[k], v), (when, k)
        s = json.loads((out / "summary.json").read_text())
        assert s["seeds"] == ref_summary["seeds"] and s["n_samples"] == 12, when
        assert len(s["runs"]) == 2, when  # nothing duplicated
        assert (out / "ensemble.dcd").exists() and (out / "proposals.dcd").exists(), when
        assert not leftovers(out), (when, leftovers(out))
        shutil.rmtree(out)
        _sample(parts, out, 0)

    _sample(parts, out, 0)
    n = kill_every_step(monkeypatch, attempt, finish, check)
    print(f"sample: killed after each of {n} steps")
    assert n >= 12  # 5 staged files + journal + 5 moves + journal removal


# --------------------------------------------------------------------------------------------------
# train


def _tiny(**kw):
    from arbg.train.config import TrainConfig

    base = dict(
        preset="tiny",
        model_overrides=dict(n_layer=1, n_embd=32, n_head=1, head_dim=32),
        n_bins=64,
        steps=4,
        batch_size=4,
        eval_every=2,
        eval_frames=4,
        checkpoint_every=2,
        log_every=1,
        seed=1,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(ck: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ck / "model.safetensors"))


def test_train_killed_between_every_pair_of_writes_recovers(tmp_path, monkeypatch):
    from test_train import synthetic_dataset

    from arbg.train.trainer import train

    ds = synthetic_dataset(n_frames=40)
    ref = tmp_path / "ref"
    train(ds, ref, _tiny(), progress=False)
    ref_last, ref_best = _weights(ref / "last"), _weights(ref / "best")
    ref_log = (ref / "train_log.jsonl").read_text().splitlines()
    out = tmp_path / "run"

    def attempt():
        train(ds, out, _tiny(), progress=False)

    def check(when):
        for name, want in (("last", ref_last), ("best", ref_best)):
            got = _weights(out / name)
            assert all(torch.equal(got[k], want[k]) for k in want), (when, name)
        log = (out / "train_log.jsonl").read_text().splitlines()
        strip = [
            {k: v for k, v in json.loads(x).items() if "wall" not in k and "tokens_per" not in k}
            for x in log
        ]
        want = [
            {k: v for k, v in json.loads(x).items() if "wall" not in k and "tokens_per" not in k}
            for x in ref_log
        ]
        assert strip == want, when  # nothing lost, nothing duplicated
        assert not leftovers(out), (when, leftovers(out))
        shutil.rmtree(out)

    n = kill_every_step(monkeypatch, attempt, attempt, check)
    print(f"train: killed after each of {n} steps")
    assert n >= 20  # last@2, best@2, best@4, last@4: staged files, journal, moves, removal


# --------------------------------------------------------------------------------------------------
# concurrent writers

HOLDER = textwrap.dedent(
    """
    import sys, time
    from arbg.files import lock_dir
    with lock_dir(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _hold(path: Path, seconds: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(arbg.files.__file__).parents[1]))
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    from arbg.cli import main

    out = tmp_path / "run"
    holder = _hold(out, 30)
    try:
        for argv in (
            ["md", "--ns", "0.001", "--warmup-ps", "0", "--out", out],
            ["sample", ASSETS / "checkpoint", "--n", "4", "--out", out],
        ):
            rc = main([str(a) for a in argv])
            err = capsys.readouterr().err
            assert rc == 2, err
            assert f"pid {holder.pid}" in err and "--wait" in err, err
        with pytest.raises(DirectoryLocked, match=f"pid {holder.pid}"):
            with lock_dir(out):
                pass
        assert not (out / "samples.npz").exists() and not (out / "progress.json").exists()
    finally:
        holder.kill()
        holder.wait()
    with lock_dir(out):  # the OS released the dead holder's lock
        pass


def test_wait_blocks_until_the_holder_is_done(tmp_path, capsys, aldp):
    from arbg.cli import main

    out = tmp_path / "md"
    holder = _hold(out, 1.5)
    t0 = time.time()
    rc = main(["md", "--ns", "0.002", "--warmup-ps", "0.5", "--out", str(out), "--wait", "--quiet"])
    assert rc == 0 and time.time() - t0 >= 1.0
    holder.wait()
    assert json.loads((out / "progress.json").read_text()) == {"n_frames": 2}


def test_two_sample_processes_extending_one_run_lose_nothing(tmp_path):
    """The issue's example: seeds 11 and 12 into one --out at once; both exit 0 before."""
    out = tmp_path / "run"
    env = dict(
        os.environ, PYTHONPATH=str(Path(arbg.files.__file__).parents[1]), OMP_NUM_THREADS="1"
    )
    cmd = [sys.executable, "-m", "arbg.cli", "sample", str(ASSETS / "checkpoint"), "--n", "8"]
    procs = {
        seed: subprocess.Popen(
            [*cmd, "--seed", str(seed), "--out", str(out), "--quiet"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (11, 12)
    }
    results = {s: (p.wait(timeout=300), p.stderr.read()) for s, p in procs.items()}
    ok = sorted(s for s, (rc, _) in results.items() if rc == 0)
    for rc, err in results.values():
        assert rc in (0, 2) and "Traceback" not in err, err
        if rc == 2:
            assert "being written by pid" in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == ok and summary["n_samples"] == 8 * len(ok)
    with np.load(out / "samples.npz") as f:
        assert sorted(set(f["seed"].tolist())) == ok
