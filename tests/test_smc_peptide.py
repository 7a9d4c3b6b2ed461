"""Twisted SMC on a peptide (``ace-aaa-nme``) with a briefly trained tiny ARBG: consistency
with SNIS, boundary energy counts, run directories, and the refusal on ``aldp``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from arbg.chem.systems import N_ATOM_TYPES, N_RESIDUE_TYPES
from arbg.nn.coordinates import fit_binning, fit_standardization
from arbg.nn.model import ARBG, ModelConfig, token_features_for_system
from arbg.reweight import normalize_log_weights, snis
from arbg.sampling.config import SMCConfig
from arbg.sampling.runs import RUN_FILES, SamplerParts, run_smc
from arbg.sampling.sampler import TransformerProposal, make_generators
from arbg.sampling.smc import twisted_smc

torch.set_num_threads(1)
N_BINS = 512
NOISE_NM = 0.01


@pytest.fixture(scope="module")
def capped():
    from arbg.chem.systems import build_system

    return build_system("ace-aaa-nme")


def _trained_parts(system, steps: int = 120, seed: int = 0) -> SamplerParts:
    """A tiny model fitted for ``steps`` Adam steps to jittered copies of the reference
    conformation (no rotations), so its samples have finite partial energies."""
    rng = np.random.default_rng(seed)
    frames = system.positions[None] + NOISE_NM * rng.standard_normal((512, system.n_atoms, 3))
    std = fit_standardization(frames)
    z = std.forward(frames)
    binning = fit_binning(z, n_bins=N_BINS, n_atoms=system.n_atoms)
    bins = torch.as_tensor(binning.encode(z)[0])
    feats = token_features_for_system(
        system.atom_type_id, system.residue_type_id, system.residue_index
    )
    torch.manual_seed(seed)
    cfg = ModelConfig.preset(
        "tiny",
        n_bins=N_BINS,
        n_layer=1,
        n_embd=64,
        n_head=2,
        head_dim=32,
        max_atoms=64,
        n_atom_types=N_ATOM_TYPES,
        n_residue_types=N_RESIDUE_TYPES,
    )
    model = ARBG(cfg, default_feats=feats)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        b = bins[torch.randint(0, len(bins), (32,), generator=g)]
        _, loss = model(model.shift_right(b), targets=b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return SamplerParts(model.eval(), binning, std, system)


@pytest.fixture(scope="module")
def parts(capped) -> SamplerParts:
    return _trained_parts(capped)


def test_no_resampling_equals_snis_on_peptide(capped, parts):
    assert capped.boundaries and len(capped.boundaries) == 2
    m = 48
    g_bins, g_off = make_generators(5)
    prop = TransformerProposal(
        parts.model, parts.binning, parts.standardization, 1.0, g_bins, g_off
    )
    res = twisted_smc(
        prop,
        capped,
        m,
        np.random.default_rng(6),
        resample=None,
        early_reject_kt=None,
        chirality=True,
    )
    assert res.n_resampling_events == 0
    # every boundary's partial energy and the full energy were evaluated for live particles
    alive_end = np.isfinite(res.log_w)
    assert alive_end.sum() > m // 2, res.summary()
    n_b = len(capped.boundaries)
    assert len(res.ess_history) == n_b + 1
    assert m <= res.n_partial_energy_evals <= m * n_b
    if res.n_killed_chirality == res.n_killed_nonfinite == 0:
        assert res.n_partial_energy_evals == m * n_b
        assert res.n_energy_evals == m * (n_b + 1)
    assert res.tokens_generated == res.tokens_total == m * 3 * (capped.n_atoms - 1)
    # final weights = SNIS weights (-u - log q) of the same particles
    u = capped.reduced_energy(res.positions)
    np.testing.assert_allclose(res.u[alive_end], u[alive_end], rtol=1e-10)
    lw = snis(np.where(alive_end, u, np.inf), res.log_q, clip_mode=None).log_w_raw
    np.testing.assert_allclose(res.log_w[alive_end], lw[alive_end], rtol=1e-12, atol=1e-8)
    assert np.all(~np.isfinite(res.log_w[~alive_end]))
    # log q of the lineage equals the proposal's own accumulated total
    assert np.isfinite(res.log_q).all()


def test_run_smc_writes_run_dir(capped, parts, tmp_path):
    out = tmp_path / "smc"
    cfg = SMCConfig(n_particles=24, seed=3, repeats=2, early_reject_kt=100.0, ensemble_size=16)
    summary = run_smc(parts, out, cfg)
    for name in RUN_FILES:
        assert (out / name).exists(), name
    with np.load(out / "samples.npz") as f:
        d = {k: f[k] for k in f.files}
    n = 48
    assert d["coords"].shape == (n, capped.n_atoms, 3) and d["coords"].dtype == np.float32
    assert d["bins"].shape == (n, 3 * (capped.n_atoms - 1))
    for key in ("log_q", "u", "log_w", "log_w_raw"):
        assert d[key].shape == (n,) and d[key].dtype == np.float64
    assert np.isclose(np.logaddexp.reduce(d["log_w"]), 0.0)
    np.testing.assert_allclose(d["log_w"], normalize_log_weights(d["log_w_raw"]))
    # stored coords re-encode to the stored bins (up to float32 storage at bin edges)
    z = parts.standardization.forward(d["coords"].astype(np.float64))
    assert np.mean(parts.binning.encode(z)[0] == d["bins"]) > 0.999
    s = json.loads((out / "summary.json").read_text())
    assert s == json.loads(json.dumps(summary))
    assert s["method"] == "twisted_smc" and s["n_samples"] == n and s["repeats"] == 2
    assert s["n_resampling_events"] == 2 * len(capped.boundaries)
    assert s["partial_energy_evaluations"] > 0
    assert s["energy_evaluations"] > s["partial_energy_evaluations"]
    assert len(s["log_z"]) == 2 and len(s["ess_history"][0]) == len(capped.boundaries) + 1
    # lock-step SMC generates every particle's tokens; the saving is what killed particles
    # would not have needed (at most all tokens of each killed particle)
    assert s["tokens_generated"] == s["tokens_total"] == 2 * 24 * 3 * (capped.n_atoms - 1)
    killed = s["n_killed_early"] + s["n_killed_chirality"] + s["n_killed_nonfinite"]
    assert (s["tokens_saved"] > 0) == (killed > 0)
    assert s["tokens_saved"] <= killed * 3 * (capped.n_atoms - 1)
    assert s["ensemble_size"] == 16
    with pytest.raises(ValueError, match="already holds samples"):
        run_smc(parts, out, SMCConfig(n_particles=4))


def test_run_smc_refuses_aldp(aldp, tmp_path):
    parts = SamplerParts(model=None, binning=None, standardization=None, system=aldp)
    with pytest.raises(ValueError, match=r"no interior residue boundary.*arbg sample"):
        run_smc(parts, tmp_path / "x", SMCConfig(n_particles=8))
