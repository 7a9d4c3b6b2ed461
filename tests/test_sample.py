"""Tests of arbg.sampling.sampler: sampling, exact log q, chirality, run dirs, SMC adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from arbg.chem.systems import N_ATOM_TYPES, N_RESIDUE_TYPES
from arbg.eval.report import format_run
from arbg.nn.coordinates import fit_binning, fit_standardization
from arbg.nn.model import ARBG, ModelConfig, token_features_for_system
from arbg.sampling.config import SampleConfig
from arbg.sampling.runs import SamplerParts, run_sampling
from arbg.sampling.sampler import (
    TransformerProposal,
    apply_chirality,
    chirality_signs,
    generate,
    log_q,
    make_generators,
    teacher_forced_log_pi,
    to_conformations,
)
from arbg.sampling.smc import AutoregressiveProposal, twisted_smc

torch.set_num_threads(1)
N_BINS = 256


def _parts(system, seed: int = 0, frame: str = "centroid") -> SamplerParts:
    """A perturbed (non-trivial) tiny model with standardization/binning fitted on jittered
    copies of the reference conformation."""
    rng = np.random.default_rng(seed)
    frames = system.positions[None] + 0.02 * rng.standard_normal((64, system.n_atoms, 3))
    gauge = system.gauge_atoms if frame == "gauge" else None
    std = fit_standardization(frames, frame=frame, gauge_atoms=gauge)
    # margin 2: the gauge range is per coordinate, and the mirror test encodes -x
    binning = fit_binning(std.forward(frames), n_bins=N_BINS, margin=2.0, standardization=std)
    feats = token_features_for_system(
        system.atom_type_id,
        system.residue_type_id,
        system.residue_index,
        coord_index=std.coord_index,
    )
    torch.manual_seed(seed)
    cfg = ModelConfig.preset(
        "tiny",
        n_bins=N_BINS,
        n_layer=2,
        max_atoms=64,
        n_atom_types=N_ATOM_TYPES,
        n_residue_types=N_RESIDUE_TYPES,
    )
    model = ARBG(cfg, default_feats=feats)
    model.set_bin_floor(binning.token_floor(std))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return SamplerParts(model.eval(), binning, std, system)


@pytest.fixture(scope="module", params=["centroid", "gauge"])
def parts(aldp, request) -> SamplerParts:
    return _parts(aldp, frame=request.param)


def _encode(parts: SamplerParts, x: np.ndarray) -> np.ndarray:
    bins, n_clip = parts.binning.encode(parts.standardization.forward(x))
    assert n_clip == 0
    return bins


def _tf_log_q(parts: SamplerParts, bins: np.ndarray, tau: float, x: np.ndarray) -> np.ndarray:
    """Teacher-forced log q of conformations ``x`` (nm) whose bins are ``bins``."""
    lp = teacher_forced_log_pi(parts.model, torch.as_tensor(bins), tau).numpy()
    z = parts.standardization.forward(x)
    return log_q(lp, parts.binning, parts.standardization, z)


@pytest.mark.parametrize("tau", [1.0, 0.8])
def test_log_likelihood_consistency_and_reencode(parts, tau):
    batch = generate(
        parts.model,
        parts.binning,
        parts.standardization,
        24,
        tau,
        seed=11,
        chirality="none",
        batch_size=16,
    )
    assert batch.coords.dtype == np.float64 and batch.coords_f32.dtype == np.float32
    assert batch.coords.shape == (24, parts.standardization.n_atoms, 3)
    # 1e-6 relative to the categorical part: the total log q of this toy setup is close to zero
    # (the offsets cancel log pi), so "relative" is measured against |log pi| (~ -300 nats)
    tf_pi = teacher_forced_log_pi(parts.model, torch.as_tensor(batch.bins), tau).numpy()
    np.testing.assert_allclose(batch.log_pi, tf_pi, rtol=1e-6)
    scale = np.abs(tf_pi)
    tf_q = _tf_log_q(parts, batch.bins, tau, batch.coords)
    assert np.all(np.abs(batch.log_q - tf_q) <= 1e-6 * scale)
    # float64 coordinates re-encode to exactly the stored bins
    np.testing.assert_array_equal(_encode(parts, batch.coords), batch.bins)
    if parts.standardization.frame == "centroid":
        np.testing.assert_allclose(batch.coords.sum(axis=1), 0.0, atol=1e-12)  # centred
    else:  # in the gauge: A at the origin, B on +x, C in the xy plane with y > 0
        a, b, c = parts.standardization.gauge_atoms
        assert np.all(batch.coords[:, a] == 0) and np.all(batch.coords[:, b, 1:] == 0)
        assert np.all(batch.coords[:, c, 2] == 0)
    assert batch.n_tokens == 24 * parts.standardization.n_coords
    # same seed -> same samples
    again = generate(
        parts.model,
        parts.binning,
        parts.standardization,
        24,
        tau,
        seed=11,
        chirality="none",
        batch_size=16,
    )
    np.testing.assert_array_equal(again.coords, batch.coords)


def test_to_conformations_round_trips_its_draw(parts):
    # upper half of the range: the gauge frame's a and c are positive
    bins = torch.full((2, parts.standardization.n_coords), 3 * N_BINS // 4, dtype=torch.long)
    x, z = to_conformations(
        bins, None, parts.binning, parts.standardization, torch.Generator().manual_seed(0)
    )
    assert x.shape == (2, parts.standardization.n_atoms, 3)
    np.testing.assert_allclose(parts.standardization.forward(x), z, atol=1e-12)
    assert np.array_equal(parts.binning.encode(z)[0], bins.numpy())


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=-2, keepdims=True)


def test_chirality_policy_hand_mirrored(parts, aldp):
    x_l = _centred(aldp.positions)[None]
    x_d = -x_l
    chir = aldp.chirality_atoms
    assert chirality_signs(x_l, chir).tolist() == [[1]]
    assert chirality_signs(x_d, chir).tolist() == [[-1]]
    x = np.concatenate([x_l, x_d])
    bins = _encode(parts, x)
    lq = _tf_log_q(parts, bins, 1.0, x)

    zero = apply_chirality(x, bins, lq, chir, "zero")
    assert zero.wrong.tolist() == [False, True] and not zero.mirrored.any()
    np.testing.assert_array_equal(zero.log_q, lq)

    kw = dict(model=parts.model, binning=parts.binning, standardization=parts.standardization)
    mir = apply_chirality(x, bins, lq, chir, "mirror", **kw)
    assert mir.wrong.tolist() == [False, False] and mir.mirrored.tolist() == [False, True]
    np.testing.assert_array_equal(mir.positions[1], x_l[0])
    np.testing.assert_array_equal(mir.bins[1], bins[0])
    both = np.logaddexp(lq[0], lq[1])  # q(y) + q(-y) for the kept AND the mirrored sample
    np.testing.assert_allclose(mir.log_q, [both, both], rtol=1e-9)
    assert mir.log_q[1] != lq[1] and mir.n_teacher_forced == 2


@pytest.mark.parametrize("frame", ["centroid", "gauge"])
def test_chirality_partially_wrong_gets_zero_weight(aaa, frame):
    p = _parts(aaa, frame=frame)
    chir = aaa.chirality_atoms
    x = _centred(aaa.positions)[None]
    ca, cb = chir[1, 1], chir[1, 3]
    ha = ca + 1
    assert aaa.atom_names[ha] == "HA"
    part = x.copy()
    part[:, [ha, cb]] = part[:, [cb, ha]]  # swapping CB and HA inverts residue 2
    assert chirality_signs(part, chir).tolist() == [[1, -1, 1]]
    xs = np.concatenate([x, part, -x])
    bins = _encode(p, xs)
    lq = _tf_log_q(p, bins, 1.0, xs)
    mir = apply_chirality(
        xs,
        bins,
        lq,
        chir,
        "mirror",
        model=p.model,
        binning=p.binning,
        standardization=p.standardization,
    )
    assert mir.wrong.tolist() == [False, True, False]
    assert mir.mirrored.tolist() == [False, False, True]
    assert mir.log_q[1] == lq[1]  # zero weight anyway
    np.testing.assert_allclose(mir.log_q[[0, 2]], np.logaddexp(lq[0], lq[2]), rtol=1e-9)


def test_run_sampling_writes_and_extends(parts, aldp, tmp_path):
    import mdtraj

    out = tmp_path / "run"
    s1 = run_sampling(
        parts, out, SampleConfig(n=12, seed=0, batch_size=8, ensemble_size=5), energy=aldp
    )
    for name in ("topology.pdb", "proposals.dcd", "samples.npz", "ensemble.dcd", "summary.json"):
        assert (out / name).exists(), name
    with np.load(out / "samples.npz") as f:
        d1 = {k: f[k] for k in f.files}
    assert d1["coords"].dtype == np.float32 and d1["coords"].shape == (12, aldp.n_atoms, 3)
    assert d1["bins"].dtype == np.int16 and d1["log_w"].dtype == np.float64
    assert set(d1) >= {"log_q", "u", "log_w", "chirality_wrong", "seed"}
    assert np.all(np.isneginf(d1["log_w"][d1["chirality_wrong"]]))
    assert s1["n_samples"] == 12 and s1["seeds"] == [0]
    assert s1["n_chirality_wrong"] == int(d1["chirality_wrong"].sum())
    assert s1["tokens_generated"] == 12 * parts.standardization.n_coords
    traj = mdtraj.load(str(out / "proposals.dcd"), top=str(out / "topology.pdb"))
    assert traj.n_frames == 12
    np.testing.assert_allclose(traj.xyz, d1["coords"], atol=1e-5)

    s2 = run_sampling(parts, out, SampleConfig(n=8, seed=1, batch_size=8), energy=aldp)
    with np.load(out / "samples.npz") as f:
        d2 = {k: f[k] for k in f.files}
    assert s2["n_samples"] == 20 and s2["n_new"] == 8 and s2["seeds"] == [0, 1]
    np.testing.assert_array_equal(d2["coords"][:12], d1["coords"])
    np.testing.assert_array_equal(d2["seed"], [0] * 12 + [1] * 8)
    assert len(json.loads((out / "summary.json").read_text())["runs"]) == 2
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\] already used .*--seed 2"):
        run_sampling(parts, out, SampleConfig(n=4, seed=1), energy=aldp)
    # 20 samples of a perturbed toy model: the collapse check fires and says so, labelled
    w = s2["weights"]
    assert w["n"] == 20 and w["ess_clipped"] == pytest.approx(s2["ess"])
    assert s2["ess_unclipped"] == pytest.approx(w["ess_unclipped"])
    assert s2["warnings"] and any("ESS" in x and "unclipped" in x for x in s2["warnings"])
    text = format_run(s2, out)
    assert "ESS (clipped weights)" in text and "ESS (unclipped weights)" in text
    assert text.splitlines()[-1].startswith("WARNING: SNIS weights")
    with pytest.raises(ValueError, match="tau"):
        run_sampling(parts, out, SampleConfig(n=4, tau=0.5, seed=7), energy=aldp)


def test_transformer_proposal_matches_generate(parts):
    m = 8
    batch = generate(
        parts.model,
        parts.binning,
        parts.standardization,
        m,
        0.9,
        seed=0,
        chirality="none",
        batch_size=m,
        generators=make_generators(5),
    )
    prop = TransformerProposal(
        parts.model, parts.binning, parts.standardization, 0.9, *make_generators(5)
    )
    assert isinstance(prop, AutoregressiveProposal)
    state = prop.start(m)
    inc = prop.extend(state, prop.n_units)  # one call: same offset stream as generate()
    pos = prop.finish(state)
    np.testing.assert_array_equal(prop.bins(state), batch.bins)
    np.testing.assert_allclose(inc, batch.log_q, rtol=1e-9)
    np.testing.assert_array_equal(pos, batch.coords)

    # in pieces, with a reordering in between: consistent with teacher forcing
    prop = TransformerProposal(
        parts.model, parts.binning, parts.standardization, 0.9, *make_generators(5)
    )
    state = prop.start(m)
    total = prop.extend(state, 21)
    np.testing.assert_array_equal(
        prop.bins(state), batch.bins[:, : state.decoder.n_done]
    )  # same stream
    prefix = prop.coords(state)
    idx = np.array([3, 3, 0, 1, 7, 7, 7, 2])
    prop.reorder(state, idx)
    total = total[idx] + prop.extend(state, prop.n_units - 21)
    pos = prop.finish(state)
    np.testing.assert_array_equal(pos[:, :7].reshape(m, 21), prefix[idx])  # offsets kept
    np.testing.assert_allclose(total, state.log_q, rtol=1e-12)
    bins = prop.bins(state)
    np.testing.assert_array_equal(_encode(parts, pos), bins)
    tf_pi = teacher_forced_log_pi(parts.model, torch.as_tensor(bins), 0.9).numpy()
    assert np.all(np.abs(total - _tf_log_q(parts, bins, 0.9, pos)) <= 1e-6 * np.abs(tf_pi))


@pytest.mark.parametrize("frame", ["centroid", "gauge"])
def test_twisted_smc_with_transformer_proposal(aaa, frame):
    p = _parts(aaa, frame=frame)
    prop = TransformerProposal(p.model, p.binning, p.standardization, 1.0, *make_generators(2))
    res = twisted_smc(
        prop, aaa, 8, np.random.default_rng(0), resample=None, early_reject_kt=None, chirality=False
    )
    bins = _encode(p, res.positions)
    tf_pi = teacher_forced_log_pi(p.model, torch.as_tensor(bins), 1.0).numpy()
    assert np.all(
        np.abs(res.log_q - _tf_log_q(p, bins, 1.0, res.positions)) <= 1e-6 * np.abs(tf_pi)
    )
    ok = np.isfinite(res.u)
    np.testing.assert_allclose(res.log_w[ok], -res.u[ok] - res.log_q[ok], rtol=1e-9)
