"""Issue 27, "honest at every exit": signals, changed data on resume, shared output directories,
truncated MD chunks, full disks, non-ASCII paths, file modes, the compile fallback, EMA loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import synthetic_dataset, tiny_config

from arbg.chem.systems import build_system
from arbg.data.datasets import Dataset
from arbg.train.checkpoints import load_trainer_state
from arbg.train.trainer import Trainer

SRC = Path(__file__).resolve().parents[1] / "src"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train_data(tmp_path: Path, n_frames: int = 120, seed: int = 0) -> tuple[Path, Path]:
    ds = synthetic_dataset(n_frames=n_frames, seed=seed)
    data = tmp_path / f"frames{seed}.npy"
    np.save(data, ds.positions)
    pdb = tmp_path / "aldp.pdb"
    if not pdb.exists():
        ds.system.save_pdb(pdb)
    return data, pdb


def test_sigterm_saves_a_checkpoint_and_exits_like_ctrl_c(tmp_path):
    """A batch scheduler's SIGTERM ends training with ``last`` saved at the step reached and
    exit status 128 + 15, one line on stderr; running the command again resumes."""
    data, pdb = _train_data(tmp_path)
    out = tmp_path / "t"
    argv = [sys.executable, "-m", "arbg.cli", "train", str(data), "--topology", str(pdb)]
    argv += ["--out", str(out), "--preset", "tiny", "--steps", "100000", "--batch-size", "4"]
    argv += ["--log-every", "1", "--eval-every", "0", "--checkpoint-every", "0", "--quiet"]
    argv += ["--device", "cpu", "--eval-frames", "4"]
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = out / "train_log.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and '"event": "train"' in log.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("arbg train:")]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "checkpoint saved" in lines[0], err
    assert "Traceback" not in err
    state = load_trainer_state(out / "last")
    assert state is not None and state["step"] >= 1


def _cli(argv: list, capsys) -> tuple[int, str]:
    from arbg.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def test_resume_with_other_data_preset_or_molecule_is_refused(tmp_path, capsys):
    """The checkpoint records the data it was trained on; a resume with other data, another
    --preset, other tokens (--bond-offsets, --frame, --n-bins) or another molecule is refused in
    one line naming the option."""
    data, pdb = _train_data(tmp_path)
    other, _ = _train_data(tmp_path, seed=1)
    out = tmp_path / "t"
    base = ["train", data, "--topology", pdb, "--out", out, "--device", "cpu", "--quiet"]
    base += ["--batch-size", "4", "--eval-frames", "4", "--eval-every", "0"]
    rc, err = _cli([*base, "--steps", "1"], capsys)
    assert rc == 0, err
    rec = json.loads((out / "last" / "config.json").read_text())["training"]["data"]
    assert rec["n_frames"] == 120 and rec["source"] == str(data.resolve()) and rec["sha256"]
    rc, err = _cli([*base, "--steps", "2", "--preset", "small"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--preset" in err, err
    for flag in (["--bond-offsets"], ["--frame", "centroid"], ["--n-bins", "512"]):
        rc, err = _cli([*base, "--steps", "2", *flag], capsys)  # other tokens than stored
        assert rc == 2 and len(err.strip().splitlines()) == 1 and flag[0] in err, err
    other_argv = [*base, "--steps", "2"]
    other_argv[1] = other
    rc, err = _cli(other_argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "data:" in err, err
    assert str(other.resolve()) in err
    # another molecule (library)
    aaa = build_system("aaa", minimize=False)
    rng = np.random.default_rng(0)
    pos = aaa.positions[None] + 0.01 * rng.standard_normal((40, aaa.n_atoms, 3))
    ds = Dataset(pos.astype(np.float32), aaa, {"train": [0, 32], "val": [32, 36], "test": [36, 40]})
    with pytest.raises(ValueError, match="data:.*'aaa'"):
        Trainer(ds, out, tiny_config(model_overrides={"head": "bins"}), progress=False)
    rc, err = _cli([*base, "--steps", "2"], capsys)  # the same data resume
    assert rc == 0, err


ASSET_CKPT = SRC / "arbg" / "assets" / "aldp" / "checkpoint"
MD_ARGS = ["--ns", "0.03", "--warmup-ps", "0.5", "--chunk-frames", "10"]


def test_one_out_one_maker(tmp_path, capsys):
    """An `arbg md` directory is not a sampling run and the reverse: the second command is
    refused in one line naming --out and what made the directory; topology.pdb is untouched."""
    md = tmp_path / "md"
    rc, err = _cli(["md", *MD_ARGS, "--out", md, "--quiet"], capsys)
    assert rc == 0, err
    pdb = (md / "topology.pdb").read_bytes()
    rc, err = _cli(["sample", ASSET_CKPT, "--out", md, "--n", "4", "--quiet"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--out" in err and "arbg md" in err and "arbg sample" in err, err
    assert (md / "topology.pdb").read_bytes() == pdb and not (md / "samples.npz").exists()
    maker = json.loads((md / ".arbg-maker.json").read_text())
    assert maker == {"command": "md", "system": "aldp", "n_atoms": 22}

    run = tmp_path / "run"
    rc, err = _cli(["sample", ASSET_CKPT, "--out", run, "--n", "4", "--quiet"], capsys)
    assert rc == 0, err
    pdb = (run / "topology.pdb").read_bytes()
    rc, err = _cli(["md", *MD_ARGS, "--out", run, "--quiet"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "arbg sample" in err and "--out" in err, err
    assert (run / "topology.pdb").read_bytes() == pdb and not (run / "chunks").exists()
    rc, err = _cli(["train", md, "--out", run, "--steps", "1", "--quiet"], capsys)
    assert rc == 2 and "arbg sample" in err and "arbg train" in err, err
    rc, err = _cli(["sample", ASSET_CKPT, "--out", run, "--n", "4", "--seed", "5"], capsys)
    assert rc == 0, err  # the same maker extends its run


def test_refused_evaluate_leaves_no_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "samples.npz", log_q=np.zeros(3), u=np.zeros(3))
    (run / "summary.json").write_text('{"n_samples": 3, "tau"')
    out = tmp_path / "new" / "report"
    rc, err = _cli(["evaluate", run, "--reference", tmp_path, "--out", out], capsys)
    assert rc == 2 and "summary.json" in err, err
    assert not out.exists() and not out.parent.exists()
    rc, err = _cli(["evaluate", run, "--reference", tmp_path], capsys)
    assert rc == 2 and not (run / "report").exists()


def test_truncated_md_chunk_refused_before_extending(tmp_path, capsys):
    """A truncated committed chunk is found before an extension is simulated: one line naming
    the file, nothing committed."""
    md = tmp_path / "md"
    rc, err = _cli(["md", *MD_ARGS, "--out", md, "--quiet"], capsys)
    assert rc == 0, err
    chunk = md / "chunks" / "chunk_000001.npy"
    chunk.write_bytes(chunk.read_bytes()[:-60])
    progress = (md / "progress.json").read_bytes()
    before = sorted(p.name for p in (md / "chunks").iterdir())
    longer = ["--ns", "0.05", *MD_ARGS[2:]]
    rc, err = _cli(["md", *longer, "--out", md, "--quiet"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "chunk_000001.npy" in err and "truncated" in err, err
    assert (md / "progress.json").read_bytes() == progress
    assert sorted(p.name for p in (md / "chunks").iterdir()) == before


def test_compile_failure_retries_the_same_micro_batch(tmp_path, monkeypatch):
    """A torch.compile that fails at its first call falls back to the eager model on the same
    micro-batch: the run reaches the weights (and data position) of an eager run."""
    ds = synthetic_dataset()
    cfg = tiny_config(steps=4, grad_accum=2)
    eager = Trainer(ds, tmp_path / "eager", cfg, progress=False)
    eager.run()

    def broken_compile(module, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("compiler backend failed")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    tr = Trainer(ds, tmp_path / "compiled", cfg, progress=False)
    tr.ddp = torch.compile(tr.ddp)  # what the trainer does on a GPU with compile=True
    tr.run()
    assert tr.ddp is tr._eager_ddp
    assert torch.equal(tr.data_gen.get_state(), eager.data_gen.get_state())
    a, b = eager.model.state_dict(), tr.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_loads_ema_weights_by_default(tmp_path):
    """load_checkpoint uses the EMA weights when the checkpoint has them (the default) and the
    raw weights with use_ema=False; the two differ."""
    from safetensors.torch import load_file

    from arbg.train.checkpoints import load_checkpoint

    ds = synthetic_dataset()
    tr = Trainer(ds, tmp_path / "e", tiny_config(steps=6, ema=True, ema_decay=0.9), progress=False)
    last = tr.run()
    raw, ema = load_file(str(last / "model.safetensors")), load_file(str(last / "ema.safetensors"))
    q = "blocks.0.attn.q.weight"
    assert not torch.equal(raw[q], ema[q])
    ck = load_checkpoint(last)
    assert ck.used_ema
    plain = load_checkpoint(last, use_ema=False)
    assert not plain.used_ema
    for k, v in ck.model.state_dict().items():
        assert torch.equal(v, ema[k]), k
        assert torch.equal(plain.model.state_dict()[k], raw[k]), k
    assert not torch.equal(ck.model.state_dict()[q], plain.model.state_dict()[q])
    assert torch.equal(ema[q], tr.ema.state_dict()[q])


def test_run_extended_through_another_spelling_of_its_checkpoint(tmp_path, capsys):
    """A run records its checkpoint resolved: the same checkpoint through a symlink, a relative
    or an absolute path extends the run; another checkpoint is still refused."""
    import shutil

    link = tmp_path / "link"
    link.symlink_to(ASSET_CKPT, target_is_directory=True)
    run = tmp_path / "run"
    rc, err = _cli(["sample", link, "--out", run, "--n", "4", "--quiet"], capsys)
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["checkpoint"] == str(ASSET_CKPT.resolve())
    rc, err = _cli(["sample", ASSET_CKPT, "--out", run, "--n", "4", "--seed", "1"], capsys)
    assert rc == 0, err
    other = tmp_path / "copy"
    shutil.copytree(ASSET_CKPT, other)
    rc, err = _cli(["sample", other, "--out", run, "--n", "4", "--seed", "2"], capsys)
    assert rc == 2 and "checkpoint" in err, err


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_files_get_the_umask_mode(tmp_path, umask):
    ds = synthetic_dataset()
    old = os.umask(umask)
    try:
        last = Trainer(ds, tmp_path / "m", tiny_config(steps=1, ema=True), progress=False).run()
    finally:
        os.umask(old)
    modes = {f.name: f.stat().st_mode & 0o777 for f in last.iterdir()}
    assert "model.safetensors" in modes and "ema.safetensors" in modes
    assert modes == dict.fromkeys(modes, 0o666 & ~umask), modes


def test_non_ascii_paths(tmp_path, capsys):
    """A home folder named Müller: arbg md, arbg sample and a DCD dataset work there (mdtraj's
    DCD code takes ASCII paths only)."""
    home = tmp_path / "Müller"
    md = home / "md"
    rc, err = _cli(["md", *MD_ARGS, "--out", md, "--quiet"], capsys)
    assert rc == 0, err
    assert (md / "trajectory.dcd").stat().st_size > 0
    rc, err = _cli(["md", *MD_ARGS, "--out", md, "--quiet"], capsys)  # a re-run
    assert rc == 0, err
    run = home / "run"
    rc, err = _cli(["sample", ASSET_CKPT, "--out", run, "--n", "4", "--quiet"], capsys)
    assert rc == 0, err
    assert (run / "proposals.dcd").stat().st_size > 0
    from arbg.data.datasets import load_dataset

    ds = load_dataset(md / "trajectory.dcd", topology=md / "topology.pdb")
    assert len(ds) == 30


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (skipped where mounting is not permitted)."""
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(d: Path, leave: int) -> None:
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
    (d / "filler").write_bytes(b"\0" * max(0, free - leave))


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.rglob("*") if ".tmp" in p.name or p.name.startswith(".arbg-staged")]


@pytest.mark.parametrize("leave", [8 << 10, 64 << 10])
def test_full_disk_says_disk_full(small_disk, capsys, leave):
    """A full disk is one line naming the file and the cause (exit 2), whatever the writer
    (npy chunks, the DCD writer, safetensors); no staged or temporary file is left on it."""
    md = small_disk / "md"
    _fill(small_disk, leave)
    rc, err = _cli(["md", "--ns", "0.5", "--warmup-ps", "0.5", "--out", md, "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "disk full" in lines[0], err
    assert str(md) in lines[0] and "internal error" not in err, err
    assert _leftovers(small_disk) == []


def test_full_disk_on_checkpoint_and_sampling_run(small_disk, tmp_path, capsys):
    data, pdb = _train_data(tmp_path)
    out = small_disk / "t"
    argv = ["train", data, "--topology", pdb, "--out", out, "--steps", "1", "--quiet"]
    rc, err = _cli([*argv, "--batch-size", "4", "--eval-frames", "4", "--device", "cpu"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "disk full" in lines[0], err
    assert "model.safetensors" in lines[0] and "internal error" not in err, err
    assert _leftovers(small_disk) == []
    run = small_disk / "run"
    _fill(small_disk, 40 << 10)
    rc, err = _cli(["sample", ASSET_CKPT, "--out", run, "--n", "400", "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "disk full" in lines[0], err
    assert str(run) in lines[0] and "internal error" not in err, err
    assert _leftovers(small_disk) == []
