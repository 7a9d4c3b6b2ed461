"""Acceptance: SNIS and twisted SMC with a trained ARBG reproduce exact Boltzmann expectations.

A :class:`toys.HarmonicChainTarget` (5 particles, harmonic bonds and angles, one
double-well torsion) goes through the same path as a peptide: exact samples in random
orientations -> centring + standardization -> binning -> a small ARBG trained with random
rotation augmentation -> KV-cached sampling with exact log q (uniform in-bin offsets, Jacobians,
last atom from the centring constraint) -> SNIS, and twisted SMC with a TransformerProposal and
independent repeats. Estimates of the torsion-well population and the mean energy must match
the quadrature values within 3 standard errors. The chain is softer than the class default
(k_bond = 100 kT/nm^2, k_angle = 2 kT/rad^2) so that a model trained for a few hundred CPU
steps is a usable proposal; the exact values stay exact. Fixed seeds throughout.

Both frames are tested: the published centroid frame (rotation augmentation) and the gauge frame
(rotation fixed by atoms 1, 2, 3; conformation-dependent Jacobian ``-2 log a - log c``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from toys import HarmonicChainTarget

from arbg.nn.coordinates import fit_binning, fit_standardization, random_rotations, rotate
from arbg.nn.model import ARBG, ModelConfig, token_features_for_system
from arbg.reweight import snis, weighted_mean
from arbg.sampling.sampler import TransformerProposal, generate, make_generators
from arbg.sampling.smc import smc_repeats

torch.set_num_threads(1)

N_ATOMS = 5
N_BINS = 512
STEPS = 300
BATCH = 128
LR = 1e-2
OBSERVABLES = ("p_well_a", "mean_energy")


# the gauge frame (arbg's default) runs in the default suite (< 60 s on one core); the published
# centroid frame, which needs the rotation augmentation to be learnt, with the slow tests
@pytest.fixture(scope="module", params=[pytest.param("centroid", marks=pytest.mark.slow), "gauge"])
def fitted(request):
    t0 = time.perf_counter()
    target = HarmonicChainTarget(n_atoms=N_ATOMS, k_bond=100.0, k_angle=2.0)
    rng = np.random.default_rng(0)
    x_train = target.sample_exact(10_000, rng)  # randomly rotated, centred
    gauge = (1, 2, 3) if request.param == "gauge" else None
    std = fit_standardization(x_train, frame=request.param, gauge_atoms=gauge)
    binning = fit_binning(std.forward(x_train), n_bins=N_BINS, standardization=std)
    idx = np.arange(N_ATOMS)
    feats = token_features_for_system(
        np.zeros(N_ATOMS, int), np.zeros(N_ATOMS, int), idx, coord_index=std.coord_index
    )
    torch.manual_seed(0)
    cfg = ModelConfig.preset(
        "tiny",
        n_bins=N_BINS,
        n_layer=2,
        n_embd=64,
        n_head=4,
        head_dim=16,
        max_atoms=16,
        n_atom_types=2,
        n_residue_types=2,
        max_residues=16,
    )
    model = ARBG(cfg, default_feats=feats)
    model.set_bin_floor(binning.token_floor(std))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    xt = torch.as_tensor(x_train)
    g = torch.Generator().manual_seed(1)
    loss = torch.tensor(float("nan"))
    for step in range(STEPS):
        b = xt[torch.randint(0, len(xt), (BATCH,), generator=g)]
        bins, _ = binning.encode(std.forward(rotate(b, random_rotations(BATCH, g))))
        warm = min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = LR * warm * 0.5 * (1 + np.cos(np.pi * step / STEPS))
        _, loss = model(model.shift_right(bins), targets=bins)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    print(
        f"\ntrained {STEPS} steps in {time.perf_counter() - t0:.1f} s, "
        f"final loss {loss.item():.3f} nats/coordinate"
    )
    return target, model.eval(), binning, std


@pytest.fixture(scope="module")
def exact(fitted) -> dict[str, float]:
    return fitted[0].exact_observables()


def test_snis_matches_exact(fitted, exact):
    target, model, binning, std = fitted
    batch = generate(model, binning, std, 8_000, tau=1.0, seed=2, chirality="none")
    u = target.reduced_energy(batch.coords)
    res = snis(u, batch.log_q, clip_mode=None)
    obs = target.sample_observables(batch.coords)
    print(f"SNIS: N={len(batch)}, ESS {res.ess:.0f} ({res.ess / len(batch):.1%})")
    for key in OBSERVABLES:
        m, se = weighted_mean(obs[key], res.log_w)
        m, se = float(m), float(se)
        print(
            f"  {key}: exact {exact[key]:.4f}  raw {obs[key].mean():.4f}  "
            f"SNIS {m:.4f} +- {se:.4f}  ({(m - exact[key]) / se:+.2f} SE)"
        )
        assert abs(m - exact[key]) < 3.0 * se, (key, m, se, exact[key])


def test_smc_matches_exact(fitted, exact):
    target, model, binning, std = fitted
    g_bins, g_off = make_generators(3)
    prop = TransformerProposal(model, binning, std, 1.0, g_bins, g_off)
    rep = smc_repeats(
        prop,
        target,
        1000,
        6,
        np.random.default_rng(4),
        resample="systematic",
        ess_threshold=0.5,
        early_reject_kt=None,
        chirality=False,
    )
    ess = np.array([r.ess for r in rep.results])
    n_res = sum(r.n_resampling_events for r in rep.results)
    print(
        f"SMC: 6 x 1000 particles, final ESS median {np.median(ess):.0f}, {n_res} resampling events"
    )
    assert n_res > 0
    for key in OBSERVABLES:
        m, se = rep.estimate(lambda x, key=key: target.sample_observables(x)[key])
        print(
            f"  {key}: exact {exact[key]:.4f}  SMC {m:.4f} +- {se:.4f}  "
            f"({(m - exact[key]) / se:+.2f} SE)"
        )
        assert abs(m - exact[key]) < 3.0 * se, (key, m, se, exact[key])
