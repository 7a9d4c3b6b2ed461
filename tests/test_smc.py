"""Tests for arbg.sampling.smc: twisted SMC on the exactly solvable harmonic chain."""

from __future__ import annotations

import numpy as np
import pytest
from toys import ChainProposal, HarmonicChainTarget

from arbg.reweight import snis
from arbg.sampling.sampler import chirality_signs
from arbg.sampling.smc import AutoregressiveProposal, smc_repeats, twisted_smc


@pytest.fixture(scope="module")
def target() -> HarmonicChainTarget:
    return HarmonicChainTarget()


@pytest.fixture(scope="module")
def exact(target) -> dict:
    return target.exact_observables()


def test_proposal_protocol(target):
    assert isinstance(ChainProposal(target), AutoregressiveProposal)


def test_no_resampling_equals_snis(target):
    prop = ChainProposal(target, rng=np.random.default_rng(0))
    res = twisted_smc(
        prop, target, 500, np.random.default_rng(1), resample=None, early_reject_kt=None
    )
    assert res.n_resampling_events == 0
    np.testing.assert_allclose(res.u, target.reduced_energy(res.positions), rtol=0, atol=1e-12)
    s = snis(res.u, res.log_q, clip_mode=None)
    np.testing.assert_allclose(res.log_w, s.log_w_raw, rtol=0, atol=1e-9)
    assert len(res.ess_history) == len(target.boundaries) + 1
    assert res.n_partial_energy_evals == 500 * len(target.boundaries)
    assert res.n_energy_evals == 500 * (len(target.boundaries) + 1)
    assert res.tokens_generated == res.tokens_total == 500 * 15 and res.tokens_saved == 0


@pytest.mark.parametrize("ess_threshold", [None, 0.8])
def test_smc_matches_exact_within_3se(target, exact, ess_threshold):
    prop = ChainProposal(target, rng=np.random.default_rng(10))
    rep = smc_repeats(
        prop,
        target,
        300,
        30,
        np.random.default_rng(11),
        ess_threshold=ess_threshold,
        early_reject_kt=None,
    )
    if ess_threshold is None:
        assert all(r.n_resampling_events == len(target.boundaries) for r in rep.results)
    assert any(r.n_unique_ancestors < 300 for r in rep.results)
    for key in ("p_well_a", "mean_energy"):
        m, se = rep.estimate(lambda x, key=key: target.sample_observables(x)[key])
        assert abs(m - exact[key]) < 3.0 * se, (key, m, se, exact[key])
    # normalizing constant: Z_hat is unbiased in Z
    z = np.exp(rep.log_z - target.exact_log_z())
    assert abs(z.mean() - 1.0) < 3.0 * z.std(ddof=1) / np.sqrt(z.size) + 1e-3


def test_early_rejection_counts_tokens(target):
    prop = ChainProposal(target, rng=np.random.default_rng(20))
    res = twisted_smc(
        prop, target, 400, np.random.default_rng(21), resample=None, early_reject_kt=3.0
    )
    dead = ~np.isfinite(res.log_w)
    assert res.n_killed_early == dead.sum() > 0
    assert 0 < res.tokens_saved < res.tokens_total
    assert np.isclose(res.tokens_saved_fraction, res.tokens_saved / (400 * 15))
    # killed at the boundary with b atoms save 3 (n - 1) - 3 b tokens: between 3 and 9 each
    assert 3 * dead.sum() <= res.tokens_saved <= 9 * dead.sum()
    # with resampling the killed particles are replaced
    res2 = twisted_smc(prop, target, 400, np.random.default_rng(22), early_reject_kt=3.0)
    assert res2.n_killed_early > 0 and np.isfinite(res2.log_w).sum() > 0


def test_chirality_kills_wrong_handed_particles():
    target = HarmonicChainTarget()
    # treat atoms (0, 1, 2, 3) as (N, CA, C, CB): handedness = sign of the first torsion
    target.chirality_atoms = np.array([[0, 1, 2, 3]])
    prop = ChainProposal(target, rng=np.random.default_rng(30))
    res = twisted_smc(
        prop, target, 400, np.random.default_rng(31), resample=None, early_reject_kt=None
    )
    alive = np.isfinite(res.log_w)
    assert res.n_killed_chirality == (~alive).sum() > 0
    assert np.all(chirality_signs(res.positions[alive], target.chirality_atoms) == 1)
    # killed at boundary index 2 (4 atoms): 3 remaining tokens each
    assert res.tokens_saved == 3 * res.n_killed_chirality
    off = twisted_smc(
        prop,
        target,
        400,
        np.random.default_rng(31),
        resample=None,
        early_reject_kt=None,
        chirality=False,
    )
    assert off.n_killed_chirality == 0 and np.all(np.isfinite(off.log_w))


class _Dead(HarmonicChainTarget):
    def prefix_energy(self, i, x_prefix):
        return np.full(x_prefix.shape[0], np.inf if i == 1 else 0.0)


def test_all_particles_dead_raises():
    target = _Dead()
    prop = ChainProposal(target, rng=np.random.default_rng(40))
    with pytest.raises(RuntimeError, match="all 50 particles have weight zero at boundary 1"):
        twisted_smc(prop, target, 50, np.random.default_rng(41))


class _Functional(ChainProposal):
    """reorder returns a new state instead of mutating (allowed by the protocol)."""

    def reorder(self, state, index):
        return type(state)(x=state.x[index].copy(), n_done=state.n_done)


def test_reorder_may_return_new_state(target):
    prop = _Functional(target, rng=np.random.default_rng(50))
    res = twisted_smc(prop, target, 100, np.random.default_rng(51))
    np.testing.assert_allclose(res.u, target.reduced_energy(res.positions))
    assert res.n_resampling_events == 3
