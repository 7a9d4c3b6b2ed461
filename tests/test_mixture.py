"""Mixtures of proposals (arbg.sampling.sampler.generate_mixture, `arbg mixture`): the mixture's
log q against an independent teacher-forced reference, its normalisation against its own
sampler, and the files and refusals of the commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from toys import HarmonicChainTarget, small_chain_model

from arbg.nn.coordinates import fit_binning, fit_standardization
from arbg.sampling.sampler import generate, generate_mixture, log_q, log_q_at

torch.set_num_threads(1)
N_ATOMS, N_BINS = 5, 64
ASSETS = Path(__file__).resolve().parents[1] / "src" / "arbg" / "assets" / "aldp"


class Member:
    """What a mixture member needs (duck-types a loaded checkpoint)."""

    def __init__(self, model, binning, standardization, feats):
        self.model, self.binning, self.standardization, self.feats = (
            model,
            binning,
            standardization,
            feats,
        )


@pytest.fixture(scope="module")
def members():
    """Three small untrained models over one harmonic chain, with different weights and (for the
    third) a different bin range: log q of one at another's draws is a real evaluation."""
    target = HarmonicChainTarget(n_atoms=N_ATOMS, k_bond=100.0, k_angle=2.0)
    x = target.sample_exact(2000, np.random.default_rng(0))
    std = fit_standardization(x, frame="gauge", gauge_atoms=(1, 2, 3))
    out = []
    for k, margin in enumerate((1.0, 1.0, 1.3)):
        binning = fit_binning(std.forward(x), n_bins=N_BINS, standardization=std, margin=margin)
        model = small_chain_model(std, binning, N_ATOMS, N_BINS, seed=k)
        out.append(Member(model, binning, std, None))  # None: the model's own features
    return out


def _reference_log_q(m: Member, x: np.ndarray) -> np.ndarray:
    """log q of member ``m`` at ``x`` through the model's teacher-forced forward (the reference
    path: logits, log-softmax, the drawn bins), not through teacher_forced_log_pi."""
    z = m.standardization.forward(x)
    inside = np.all((z >= m.binning.low) & (z < m.binning.high), axis=1)
    bins = torch.as_tensor(m.binning.encode(np.where(inside[:, None], z, 0.0))[0]).long()
    with torch.no_grad():
        logits, _ = m.model(m.model.shift_right(bins))
        lp = torch.log_softmax(logits.double(), -1).gather(-1, bins[..., None])[..., 0].sum(-1)
    out = log_q(lp.numpy(), m.binning, m.standardization, z)
    return np.where(inside, out, -np.inf)


def test_log_q_at_equals_the_drawn_log_q(members):
    m = members[0]
    b = generate(m.model, m.binning, m.standardization, 64, seed=1, feats=m.feats, chirality="none")
    lq, bins = log_q_at(m.model, m.binning, m.standardization, b.coords, feats=m.feats)
    np.testing.assert_allclose(lq, b.log_q, atol=2e-4)
    assert np.array_equal(bins, b.bins)


def test_mixture_log_q_is_the_weighted_sum_of_member_densities(members):
    w = np.array([0.2, 0.5, 0.3])
    b = generate_mixture(members, w, 90, seed=3, chirality="none")
    assert np.bincount(b.member, minlength=3).tolist() == [18, 45, 27]  # stratified
    ref = np.logaddexp.reduce(
        np.log(w)[:, None] + np.stack([_reference_log_q(m, b.coords) for m in members]), axis=0
    )
    np.testing.assert_allclose(b.log_q, ref, atol=2e-4)
    assert b.n_teacher_forced == 2 * 90  # every sample scored by the two other members
    # a member with weight 0 draws nothing and does not enter the density
    b0 = generate_mixture(members, [1.0, 0.0, 0.0], 20, seed=3, chirality="none")
    assert (b0.member == 0).all()
    m0, seed0 = members[0], int(np.random.default_rng([3, 0]).integers(2**31))
    one = generate(m0.model, m0.binning, m0.standardization, 20, seed=seed0, chirality="none")
    np.testing.assert_allclose(b0.log_q, one.log_q, atol=1e-9)


def test_mixture_density_is_normalised_against_its_sampler(members):
    """E over the mixture's own draws of q_a(x) / q(x) is 1 for every member a (q_a is a
    normalised density); the ratio is bounded by 1 / w_a, so 3,000 draws pin the mean within a
    few per cent. A wrong weight, allocation or member density moves it."""
    w = np.array([0.25, 0.25, 0.5])
    b = generate_mixture(members, w, 3000, seed=5, chirality="none")
    for a, m in enumerate(members):
        lq_a, _ = log_q_at(m.model, m.binning, m.standardization, b.coords, feats=m.feats)
        ratio = np.exp(lq_a - b.log_q)
        se = ratio.std(ddof=1) / np.sqrt(len(ratio))
        assert abs(ratio.mean() - 1.0) < 4 * se + 1e-3, (a, ratio.mean(), se)
        assert ratio.max() <= 1 / w[a] * (1 + 1e-6)


def test_mixture_refuses_bad_weights_and_mirror(members):
    with pytest.raises(ValueError, match="one non-negative weight per member"):
        generate_mixture(members, [1.0, 1.0], 10)
    with pytest.raises(ValueError, match="sum to zero"):
        generate_mixture(members, [0.0, 0.0, 0.0], 10)
    with pytest.raises(ValueError, match="mirror"):
        generate_mixture(members, [1, 1, 1], 10, chirality="mirror")


def test_cli_mixture_sample_and_refusals(tmp_path, capsys):
    """`arbg mixture` of the shipped aldp model with itself: `arbg sample` on it gives the single
    model's log q (a mixture of one density is that density); smc and finetune name the
    mixture; bad weights and a missing member are refused in one line."""
    from arbg.cli import main

    ck = str(ASSETS / "checkpoint")
    mix = tmp_path / "mix"
    assert main(["mixture", ck, ck, "--out", str(mix), "--weights", "1", "3"]) == 0
    record = json.loads((mix / "mixture.json").read_text())
    assert record["weights"] == [0.25, 0.75] and record["members"] == ["member-0", "member-1"]
    run = tmp_path / "run"
    assert main(["sample", str(mix), "--out", str(run), "--n", "40", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "mixture of 2 proposals" in text and "ESS (clipped weights)" in text
    with np.load(run / "samples.npz") as f:
        x, lq = f["coords"].astype(np.float64), f["log_q"]
    from arbg.train.checkpoints import load_checkpoint

    c = load_checkpoint(ck)
    own, _ = log_q_at(c.model, c.binning, c.standardization, x, feats=c.feats)
    np.testing.assert_allclose(lq, own, atol=2e-4)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mixture"]["weights"] == [0.25, 0.75]
    reference = str(ASSETS / "reference.npz")
    for argv in (
        ["smc", str(mix), "--out", str(tmp_path / "s")],
        ["finetune", str(mix), reference, "--out", str(tmp_path / "f")],
    ):
        assert main(argv) == 2
        assert "is a mixture of proposals" in capsys.readouterr().err
    for argv, what in (
        (["mixture", ck, ck, "--out", str(tmp_path / "m2"), "--weights", "1"], "--weights"),
        (["mixture", ck, "--out", str(tmp_path / "m3")], "at least 2"),
        (["mixture", ck, ck, "--out", str(mix)], "exists"),
    ):
        assert main(argv) == 2
        assert what in capsys.readouterr().err
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()
    (mix / "mixture.json").write_text(json.dumps({**record, "members": ["member-0", "../x"]}))
    assert main(["sample", str(mix), "--out", str(tmp_path / "r2"), "--n", "4", "--quiet"]) == 2
    assert "inside" in capsys.readouterr().err
