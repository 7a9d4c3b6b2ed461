"""Tests of arbg.train.trainer and arbg.train.checkpoints: Muon, loss decrease, checkpoints,
resume, DDP."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from arbg.chem.systems import build_system
from arbg.data.datasets import Dataset
from arbg.nn.coordinates import Binning
from arbg.train.checkpoints import (
    CheckpointIntegrityError,
    CheckpointMismatchError,
    load_checkpoint,
    load_trainer_state,
    write_checksums,
)
from arbg.train.config import TrainConfig, lr_factor
from arbg.train.optim import Muon, newton_schulz
from arbg.train.trainer import Trainer, train

torch.set_num_threads(1)

TINY = dict(n_layer=2, n_embd=64, n_head=2, head_dim=32)


def synthetic_dataset(n_frames: int = 120, noise_nm: float = 0.01, seed: int = 0) -> Dataset:
    """The real aldp system with Gaussian-perturbed copies of its reference positions."""
    system = build_system("aldp", minimize=False)
    rng = np.random.default_rng(seed)
    pos = system.positions[None] + noise_nm * rng.standard_normal((n_frames, system.n_atoms, 3))
    a, b = int(0.8 * n_frames), int(0.9 * n_frames)
    splits = {"train": [0, a], "val": [a, b], "test": [b, n_frames]}
    return Dataset(pos.astype(np.float32), system, splits)


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        preset="tiny",
        model_overrides=dict(TINY),
        n_bins=256,
        steps=20,
        batch_size=8,
        eval_every=0,
        eval_frames=8,
        checkpoint_every=0,
        log_every=5,
        seed=3,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_newton_schulz_orthogonalizes():
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 32), (32, 96), (48, 48)]:
        G = torch.randn(*shape, generator=g)
        X = newton_schulz(G, steps=5)
        s = torch.linalg.svdvals(X)
        assert X.shape == G.shape
        assert s.max() < 1.3 and 0.8 < s.mean() < 1.1, (shape, s)
        # a square Gaussian matrix has a few tiny singular values that 5 steps cannot lift
        assert torch.quantile(s, 0.1 if shape[0] == shape[1] else 0.0) > 0.6, (shape, s)
        # same singular vectors as the polar factor: X ~ U V^T
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        cos = (X * (U @ Vh)).sum() / (X.norm() * (U @ Vh).norm())
        assert cos > 0.95


def test_muon_step_scale():
    p = torch.nn.Parameter(torch.zeros(64, 16))
    opt = Muon([p], lr=0.1, momentum=0.0, nesterov=False)
    p.grad = torch.randn(64, 16)
    opt.step()
    s = torch.linalg.svdvals(p.detach() / (0.1 * 2.0))  # rows/cols = 4 -> scale 2
    assert 0.5 < s.mean() < 1.3


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup_frac=0.05)
    assert lr_factor(0, cfg) == pytest.approx(0.2)
    assert lr_factor(4, cfg) == pytest.approx(1.0)
    assert lr_factor(52, cfg) == pytest.approx(0.5, abs=0.02)
    assert lr_factor(99, cfg) < 0.01


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_loss_decreases_and_logs(tmp_path, optimizer):
    ds = synthetic_dataset()
    cfg = tiny_config(steps=30, batch_size=16, optimizer=optimizer, eval_every=15)
    tr = Trainer(ds, tmp_path, cfg, progress=False)
    assert tr.baselines["uniform_nll"] == pytest.approx(np.log(256))
    losses = [tr.train_step() for _ in range(30)]
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 0.3, losses
    ev = tr.evaluate()
    assert ev["val_nll"] < tr.baselines["uniform_nll"]
    assert np.isfinite(ev["val_logq"])


def test_train_writes_log_and_checkpoints(tmp_path):
    ds = synthetic_dataset()
    last = train(ds, tmp_path, tiny_config(steps=10, eval_every=5, ema=True), progress=False)
    assert last == tmp_path / "last"
    recs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    events = [r["event"] for r in recs]
    assert events[0] == "baselines" and "eval" in events and "train" in events
    ev = [r for r in recs if r["event"] == "eval"]
    assert {"step", "val_nll", "val_logq", "wall_s"} <= set(ev[0])
    tr = [r for r in recs if r["event"] == "train"]
    assert {"step", "loss", "lr", "tokens_per_s", "wall_s"} <= set(tr[0])
    assert (tmp_path / "best" / "model.safetensors").exists()
    assert not (tmp_path / "best" / "trainer_state.pt").exists()
    assert (last / "ema.safetensors").exists()
    cfg = json.loads((last / "config.json").read_text())
    assert cfg["schema_version"] == 1 and cfg["training"]["step"] == 10
    assert cfg["system"]["atom_names"][0] == "CH3"
    assert set(cfg["system"]["forcefield_sha256"]) == {"amber99sbildn.xml", "amber99_obc.xml"}
    assert {"arbg", "torch", "openmm"} <= set(cfg["versions"])
    # no temporary directories left behind (the lock file of arbg.files.lock_dir and the
    # maker record of arbg.files.claim_dir stay)
    assert {p.name for p in tmp_path.glob(".*")} <= {".arbg.lock", ".arbg-maker.json"}


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    ds = synthetic_dataset()
    tr = Trainer(ds, tmp_path, tiny_config(steps=5), progress=False)
    last = tr.run()
    ck = load_checkpoint(last, system=ds.system, use_ema=False)
    assert not ck.model.training
    assert ck.binning == tr.binning and ck.standardization == tr.std
    bins = tr.val_bins[:4]
    tr.model.eval()
    with torch.no_grad():
        ref, _ = tr.model(tr.model.shift_right(bins))
        out, _ = ck.model(ck.model.shift_right(bins), ck.feats)
    assert torch.equal(ref, out)
    # default: the system is rebuilt from the stored spec
    ck2 = load_checkpoint(last)
    assert ck2.system.atom_names == ds.system.atom_names
    # mismatched system
    with pytest.raises(CheckpointMismatchError, match="n_atoms"):
        load_checkpoint(last, system=build_system("aaa", minimize=False))
    # binning that disagrees
    with pytest.raises(CheckpointMismatchError, match="binning"):
        load_checkpoint(last, binning=Binning(128, -1.0, 1.0))
    cfg_file = last / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["binning"]["n_bins"] = 512
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointIntegrityError, match="config.json was modified"):
        load_checkpoint(last)  # an edited config is refused by its checksum ...
    write_checksums(last)  # ... and, re-signed, by the consistency checks
    with pytest.raises(CheckpointMismatchError, match="512 bins"):
        load_checkpoint(last)


def test_resume_reaches_same_weights(tmp_path):
    ds = synthetic_dataset()
    cfg = tiny_config(steps=12, checkpoint_every=4, eval_every=6)
    full = Trainer(ds, tmp_path / "a", cfg, progress=False)
    full.run()
    cfg_stop = tiny_config(steps=12, checkpoint_every=4, eval_every=6, stop_after_steps=5)
    part = Trainer(ds, tmp_path / "b", cfg_stop, progress=False)
    part.run()
    assert part.step == 5 and load_trainer_state(tmp_path / "b" / "last")["step"] == 5
    resumed = Trainer(ds, tmp_path / "b", cfg, progress=False)
    assert resumed.step == 5
    resumed.run()
    assert resumed.step == 12
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        ds = synthetic_dataset()
        cfg = tiny_config(steps=4, batch_size=8, eval_every=2, checkpoint_every=2)
        tr = Trainer(ds, Path(out) / "run", cfg, progress=False)
        state0 = tr.data_gen.get_state()
        tr.run()
        torch.save({"weights": tr.model.state_dict(), "gen0": state0}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_identical_weights(tmp_path):
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert not torch.equal(r0["gen0"], r1["gen0"])  # different data streams per rank
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k]), k
    init = Trainer(synthetic_dataset(), tmp_path / "init", tiny_config(), progress=False)
    q = "blocks.0.attn.q.weight"
    assert not torch.equal(init.model.state_dict()[q], r0["weights"][q])  # it did train
    # only rank 0 wrote files, and the checkpoint records the world size
    assert (tmp_path / "run" / "last" / "model.safetensors").exists()
    assert (
        json.loads((tmp_path / "run" / "last" / "config.json").read_text())["training"][
            "world_size"
        ]
        == 2
    )


def test_weighted_cross_entropy_draws_by_weight(tmp_path, monkeypatch):
    ds = synthetic_dataset(n_frames=120)
    log_w = np.zeros(120)
    log_w[:48] = -np.inf  # half the training frames carry no target weight
    log_w[96:102] = -np.inf  # and the first six val frames
    ds = Dataset(ds.positions, ds.system, ds.splits, log_weights=log_w)
    picks: list[torch.Tensor] = []
    real = torch.multinomial

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        picks.append(out)
        return out

    monkeypatch.setattr(torch, "multinomial", spy)
    tr = Trainer(ds, tmp_path / "w", tiny_config(steps=6, data_weights="weighted"), progress=False)
    assert torch.all(tr.train_p[:48] == 0) and abs(float(tr.train_p.sum()) - 1) < 1e-12
    tr.run()
    drawn = torch.cat(picks)
    assert len(drawn) == 6 * 8 and int(drawn.min()) >= 48
    ev = tr.evaluate()
    # weighted val NLL = plain mean over the frames that carry weight
    lp = tr.model.log_prob(tr.val_bins).double()
    w = tr.val_w
    keep = w > 0
    assert 0 < int(keep.sum()) < len(w) and torch.allclose(w[keep], w[keep][0])
    assert ev["val_nll_weighted"] == pytest.approx(float(-lp[keep].mean() / tr.D), rel=1e-6)
    assert ev["val_nll_weighted"] != pytest.approx(ev["val_nll"], rel=1e-9)
    with pytest.raises(ValueError, match="data-weights"):
        Trainer(ds, tmp_path / "x", tiny_config(data_weights="importance"), progress=False)


def test_weight_power_tempers_frame_draws_and_picks_best_on_tempered_val(tmp_path):
    """--weight-power b draws frames in proportion to w**b and picks ``best`` on the val NLL
    weighted the same way; the fully weighted val NLL is logged beside it."""
    ds = synthetic_dataset(n_frames=120)
    log_w = np.linspace(-6.0, 0.0, 120)
    ds = Dataset(ds.positions, ds.system, ds.splits, log_weights=log_w)
    cfg = tiny_config(steps=2, data_weights="weighted", weight_power=0.25)
    tr = Trainer(ds, tmp_path / "t", cfg, progress=False)
    lw = ds.split_log_weights("train")
    expect = np.exp(0.25 * lw) / np.exp(0.25 * lw).sum()
    assert np.allclose(tr.train_p.numpy(), expect, rtol=1e-12)
    full = Trainer(
        ds, tmp_path / "f", tiny_config(steps=2, data_weights="weighted"), progress=False
    )
    kish = lambda p: 1.0 / float((p**2).sum())  # noqa: E731
    assert kish(full.train_p) < kish(tr.train_p) < len(tr.train_p)
    tr.run()
    ev = tr.evaluate()
    lp = tr.model.log_prob(tr.val_bins).double()
    vt = tr.val_w_tempered
    assert ev["val_nll_tempered"] == pytest.approx(float(-(vt * lp).sum() / tr.D), rel=1e-9)
    assert ev["val_nll_tempered"] != pytest.approx(ev["val_nll_weighted"], rel=1e-9)
    tr.last_eval = ev
    assert tr._objective() == ev["val_nll_tempered"]
    assert full.val_w_tempered is None
    with pytest.raises(ValueError, match="--weight-power needs --data-weights weighted"):
        tiny_config(weight_power=0.5).validate()
    with pytest.raises(ValueError, match="weight-power"):
        tiny_config(data_weights="weighted", weight_power=0.0).validate()


def test_early_stopping_on_patience_and_resume_stays_stopped(tmp_path):
    ds = synthetic_dataset()
    cfg = tiny_config(steps=40, eval_every=2, checkpoint_every=0, patience=2)
    tr = Trainer(ds, tmp_path / "p", cfg, progress=False)
    calls = iter([5.0, 4.0, 4.5, 4.2, 3.0, 1.0, 1.0])  # val NLLs: best at the 2nd evaluation

    def fake_eval():
        v = next(calls)
        return {"val_nll": v, "val_logq": -v}

    tr.evaluate = fake_eval
    tr.run()
    assert tr.early_stopped and tr.step == 8  # evaluations at 2, 4 (best), 6, 8 -> stop
    assert tr.best_val == 4.0
    st = load_trainer_state(tmp_path / "p" / "last")
    assert st["early_stopped"] and st["step"] == 8
    again = Trainer(ds, tmp_path / "p", cfg, progress=False)
    again.run()
    assert again.step == 8  # a resumed early-stopped run does not train on


def test_trainer_state_loads_without_running_code(tmp_path):
    """trainer_state.pt is read with weights_only=True: a pickle that would run code is refused
    with a message naming the file (the checksums only prove the files match each other)."""
    import pickle

    from arbg.train.checkpoints import (
        TRAINER_STATE_FILE,
        CheckpointIntegrityError,
        write_checksums,
    )

    ck = tmp_path / "ck"
    ck.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    with open(ck / TRAINER_STATE_FILE, "wb") as f:
        pickle.dump({"step": 1, "payload": Evil()}, f)
    write_checksums(ck)
    with pytest.raises(CheckpointIntegrityError, match="trainer_state.pt: holds objects"):
        load_trainer_state(ck)
