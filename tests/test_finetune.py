"""Energy-aware fine-tuning (arbg.sampling.finetune) on an analytic target: the tempering, the
loss and its gradient, that training lowers the loss and raises the ESS, and a bit-exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toys import HarmonicChainTarget, small_chain_model

from arbg.nn.coordinates import fit_binning, fit_standardization
from arbg.nn.model import ARBG
from arbg.reweight import kish_ess
from arbg.sampling.finetune import FinetuneConfig, finetune, tempered_beta
from arbg.train.checkpoints import load_weights

torch.set_num_threads(1)
N_ATOMS, N_BINS = 5, 128


def test_tempered_beta_reaches_the_asked_ess():
    lw = np.random.default_rng(0).standard_normal(4000) * 6.0
    lw[:10] = -np.inf
    beta = tempered_beta(lw, 0.2)
    assert 0 < beta < 1
    rel = kish_ess(np.where(np.isfinite(lw), beta * lw, -np.inf)) / lw.size
    assert rel == pytest.approx(0.2, abs=1e-3)
    assert tempered_beta(0.01 * lw, 0.2) == 1.0  # already above: untempered
    with pytest.raises(ValueError, match="weight zero"):
        tempered_beta(np.full(5, -np.inf), 0.1)


@pytest.fixture(scope="module")
def chain():
    target = HarmonicChainTarget(n_atoms=N_ATOMS, k_bond=100.0, k_angle=2.0)
    x = target.sample_exact(4000, np.random.default_rng(0))
    std = fit_standardization(x, frame="gauge", gauge_atoms=(1, 2, 3))
    binning = fit_binning(std.forward(x), n_bins=N_BINS, standardization=std)
    bins, _ = binning.encode(std.forward(x))
    return target, std, binning, torch.as_tensor(bins).long()


def _model(std, binning) -> ARBG:
    return small_chain_model(std, binning, N_ATOMS, N_BINS)


def test_loss_gradient_matches_finite_differences(chain):
    """The fine-tuning loss (the fused cross-entropy of the drawn tokens) has the gradient
    autograd gives it: a central difference along a random direction agrees (to the float32
    rounding of the fused loss)."""
    _, std, binning, bins = chain
    model = _model(std, binning).double()
    batch = bins[:16]

    def loss() -> torch.Tensor:
        return model(model.shift_right(batch), targets=batch, logits=False)[1]

    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(loss(), params)
    # a unit direction mostly along the gradient (a good signal over the float32 rounding of
    # the fused loss), partly random
    gen = torch.Generator().manual_seed(0)
    rnd = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    g_norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    r_norm = torch.sqrt(sum((ri**2).sum() for ri in rnd))
    direction = [gi / g_norm + 0.5 * ri / r_norm for gi, ri in zip(g, rnd, strict=True)]
    analytic = sum((gi * di).sum() for gi, di in zip(g, direction, strict=True))
    eps = 1e-2
    with torch.no_grad():
        for p, d in zip(params, direction, strict=True):
            p.add_(eps * d)
        up = loss()
        for p, d in zip(params, direction, strict=True):
            p.sub_(2 * eps * d)
        down = loss()
    assert float(analytic) == pytest.approx(float((up - down) / (2 * eps)), rel=2e-3)


def test_finetune_lowers_the_loss_raises_the_ess_and_resumes_exactly(chain, tmp_path):
    target, std, binning, data = chain
    cfg = FinetuneConfig(
        rounds=4, samples_per_round=256, steps_per_round=15, batch_size=32, lr=3e-3, seed=3
    )
    model = _model(std, binning)
    res = finetune(model, binning, std, target, data, tmp_path / "a", cfg, system=None)
    log = res["log"]
    assert [r["round"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["loss_mean"] < log[0]["loss_mean"] - 0.5  # it learns
    assert log[-1]["ess_unclipped"] > 2 * log[0]["ess_unclipped"]  # towards the target
    assert all(0 < r["beta"] <= 1 for r in log)
    lines = (tmp_path / "a" / "finetune_log.jsonl").read_text().splitlines()
    assert len(lines) == 4
    # stopped after 2 rounds and resumed: the same weights as the straight run
    two = FinetuneConfig(**{**cfg.__dict__, "rounds": 2})
    m2 = _model(std, binning)
    finetune(m2, binning, std, target, data, tmp_path / "b", two)
    with pytest.raises(ValueError, match="other settings"):
        finetune(_model(std, binning), binning, std, target, data, tmp_path / "b", cfg)
    # same settings, more rounds: the config records rounds, so resume with a copy of last
    import shutil

    shutil.copytree(tmp_path / "b" / "last", tmp_path / "c" / "last")
    from arbg.train.checkpoints import load_trainer_state, write_checkpoint_dir

    st = load_trainer_state(tmp_path / "c" / "last")
    st["finetune_config"]["rounds"] = 4
    m3 = _model(std, binning)
    m3.load_state_dict(load_weights(tmp_path / "c" / "last", "model.safetensors"))
    write_checkpoint_dir(tmp_path / "c" / "last", {"model": m3.config.to_dict()}, m3, None, st)
    res3 = finetune(_model(std, binning), binning, std, target, data, tmp_path / "c", cfg)
    assert [r["round"] for r in res3["log"]] == [3, 4]
    a = load_weights(tmp_path / "a" / "last", "model.safetensors")
    c = load_weights(tmp_path / "c" / "last", "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_validation_draw_picks_best_by_clipped_ess(chain, tmp_path):
    """With --validate-every 2: the models before rounds 1 and 3 are scored on the fixed-seed
    validation draw (deterministic: a second run scores the first model the same), and
    ``best`` is the validated model with the largest clipped ESS."""
    target, std, binning, data = chain
    cfg = FinetuneConfig(
        rounds=4, samples_per_round=128, steps_per_round=10, batch_size=32, lr=3e-3, seed=3,
        validate_every=2, validate_samples=512,
    )  # fmt: skip
    log = finetune(_model(std, binning), binning, std, target, data, tmp_path / "a", cfg)["log"]
    scored = [r for r in log if "val_ess_clipped" in r]
    assert [r["round"] for r in scored] == [1, 3]
    assert all(0 < r["val_ess_unclipped"] <= r["val_ess_clipped"] <= 1 for r in scored)
    config = json.loads((tmp_path / "a" / "best" / "config.json").read_text())
    best = config["finetune"]
    assert best["val_ess_clipped"] == max(r["val_ess_clipped"] for r in scored)
    assert best["round"] in (1, 3) and best["rounds_done"] == best["round"] - 1
    other = FinetuneConfig(**{**cfg.__dict__, "rounds": 1})
    first = finetune(_model(std, binning), binning, std, target, data, tmp_path / "b", other)
    assert first["log"][0]["val_ess_clipped"] == scored[0]["val_ess_clipped"]
    with pytest.raises(ValueError, match="--validate-every"):
        FinetuneConfig(validate_every=-1).check()


def test_finetune_refuses_bad_settings(chain, tmp_path):
    target, std, binning, _ = chain
    with pytest.raises(ValueError, match="--data-fraction"):
        finetune(_model(std, binning), binning, std, target, None, tmp_path, FinetuneConfig())
    with pytest.raises(ValueError, match="--lr"):
        FinetuneConfig(lr=0.0).check()


def test_cli_finetune_writes_loadable_checkpoints(tmp_path, capsys):
    """`arbg finetune` on the shipped aldp model (one small round; the shipped reference frames
    stand in for training data here): best/ and last/ load as checkpoints and sample."""
    from pathlib import Path

    from arbg.cli import main
    from arbg.train.checkpoints import load_checkpoint

    assets = Path(__file__).resolve().parents[1] / "src" / "arbg" / "assets" / "aldp"
    out = tmp_path / "ft"
    argv = ["finetune", str(assets / "checkpoint"), str(assets / "reference.npz")]
    argv += ["--out", str(out), "--rounds", "1", "--samples-per-round", "64"]
    assert main([*argv, "--steps-per-round", "2", "--batch-size", "8"]) == 0
    text = capsys.readouterr().out
    assert "round   1: ESS" in text and "nats/coordinate" in text
    start = load_checkpoint(assets / "checkpoint").training
    for name in ("best", "last"):
        ck = load_checkpoint(out / name)
        assert ck.training["finetune"]["ess_unclipped"] > 0
        assert ck.training["start"] == start  # how the starting point was made travels along
