"""Tests for arbg.reweight: log weights, clipping, ESS, resampling, SNIS on an exact target."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp
from toys import ChainProposal, HarmonicChainTarget

from arbg.reweight import (
    clip_log_weights,
    kish_ess,
    log_importance_weights,
    log_mean_exp,
    mixture_log_weights,
    multinomial_resample,
    normalize_log_weights,
    relative_ess,
    snis,
    systematic_resample,
    weighted_mean,
)


def _log(w: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(w, dtype=float))


def test_log_importance_weights_and_nonfinite_counted():
    u = np.array([1.0, np.inf, np.nan, 2.0, -np.inf, 0.5])
    log_q = np.array([0.0, 0.0, 0.0, -np.inf, 0.0, -1.0])
    lw = log_importance_weights(u, log_q)
    assert lw.dtype == np.float64
    np.testing.assert_array_equal(lw, [-1.0, -np.inf, -np.inf, -np.inf, -np.inf, 0.5])
    res = snis(u, log_q, clip_mode=None)
    assert res.n_nonfinite == 4
    assert np.isclose(res.weights.sum(), 1.0)
    assert res.weights[1:5].sum() == 0.0
    assert np.isclose(res.ess, kish_ess(np.array([-1.0, 0.5])))


def test_all_zero_weights_raise_clearly():
    with pytest.raises(ValueError, match="all importance weights are zero"):
        normalize_log_weights(np.full(3, -np.inf))
    assert kish_ess(np.full(3, -np.inf)) == 0.0


def test_kish_ess_known_vectors():
    assert np.isclose(kish_ess(np.zeros(10)), 10.0)
    assert np.isclose(kish_ess(np.array([0.0, -np.inf, -np.inf])), 1.0)
    assert np.isclose(kish_ess(_log([1.0, 1.0, 0.0, 0.0])), 2.0)
    w = np.array([1.0, 2.0, 3.0])
    assert np.isclose(kish_ess(np.log(w) + 100.0), 36.0 / 14.0)  # shift invariant
    assert np.isclose(relative_ess(_log(w)), 36.0 / 14.0 / 3.0)


def test_log_mean_exp():
    x = np.log(np.array([1.0, 2.0, 3.0, 6.0]))
    assert np.isclose(log_mean_exp(x), np.log(3.0))
    assert np.isclose(log_mean_exp(x + 1000.0), np.log(3.0) + 1000.0)
    assert log_mean_exp(np.array([-np.inf, -np.inf])) == -np.inf


def test_clip_drop_cap_none():
    lw = np.arange(1000, dtype=float)
    lw[0] = -np.inf  # non-finite entries are ignored by the quantile
    thr = np.quantile(lw[1:], 0.99)
    dropped, n_drop = clip_log_weights(lw, 0.01, "drop")
    capped, n_cap = clip_log_weights(lw, 0.01, "cap")
    assert n_drop == n_cap == int((lw[1:] > thr).sum()) == 10
    assert np.all(np.isneginf(dropped[-10:])) and np.all(dropped[1:-10] == lw[1:-10])
    assert np.all(capped[-10:] == thr) and np.all(capped[:-10] == lw[:-10])
    same, n0 = clip_log_weights(lw, 0.01, None)
    assert n0 == 0 and np.array_equal(same, lw)
    assert lw[-1] == 999.0  # input untouched
    with pytest.raises(ValueError):
        clip_log_weights(lw, 0.01, "bogus")
    res = snis(np.zeros(1000), -lw, clip_fraction=0.01, clip_mode="drop")
    assert res.n_clipped == 10 and res.n_nonfinite == 1


def test_weighted_mean_and_se():
    rng = np.random.default_rng(0)
    f = rng.normal(size=200)
    m, se = weighted_mean(f, np.zeros(200))
    assert np.isclose(m, f.mean()) and np.isclose(se, f.std() / np.sqrt(200))
    w = np.array([0.5, 0.25, 0.25, 0.0])
    vals = np.array([1.0, 3.0, 5.0, np.nan])  # zero-weight value ignored
    m, se = weighted_mean(vals, _log(w))
    assert np.isclose(m, 2.5)
    assert np.isclose(se, np.sqrt(0.25 * 2.25 + 0.0625 * 0.25 + 0.0625 * 6.25))
    m2, se2 = weighted_mean(np.stack([vals, 2 * vals], 1), _log(w))
    assert np.allclose(m2, [2.5, 5.0]) and np.allclose(se2, [se, 2 * se])


@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_resampling_unbiased_on_fixed_weights(scheme):
    rng = np.random.default_rng(1)
    w = np.array([0.05, 0.0, 0.12, 0.3, 0.18, 0.35])
    lw = _log(w) + 7.0
    n, draws = 9, 4000
    fn = systematic_resample if scheme == "systematic" else multinomial_resample
    counts = np.stack([np.bincount(fn(lw, n, rng), minlength=w.size) for _ in range(draws)])
    assert np.all(counts.sum(1) == n)
    assert np.all(counts[:, 1] == 0)  # zero weight never selected
    mean = counts.mean(0)
    # per-draw variance: multinomial n w (1 - w); systematic frac (1 - frac) <= 1/4
    frac = n * w - np.floor(n * w)
    var = n * w * (1 - w) if scheme == "multinomial" else frac * (1 - frac)
    se = np.sqrt(var / draws) + 1e-12
    assert np.all(np.abs(mean - n * w) <= 4.0 * se + 1e-9), (mean, n * w, se)
    if scheme == "systematic":  # counts are floor or ceil of n w
        assert np.all(counts >= np.floor(n * w)) and np.all(counts <= np.ceil(n * w))


def test_snis_on_harmonic_chain_matches_exact():
    target = HarmonicChainTarget()
    exact = target.exact_observables()
    prop = ChainProposal(target, rng=np.random.default_rng(5))
    state = prop.start(20000)
    log_q = prop.extend(state, 3 * (target.n_atoms - 1))
    x = prop.finish(state)
    res = snis(target.reduced_energy(x), log_q, clip_mode=None)
    assert res.relative_ess > 0.05
    obs = target.sample_observables(x)
    for key in ("p_well_a", "mean_energy"):
        m, se = res.mean(obs[key])
        assert abs(m - exact[key]) < 3.0 * se, (key, m, se, exact[key])
    # raw (proposal) population of well a is far from the target: the reweighting matters
    assert abs(obs["p_well_a"].mean() - exact["p_well_a"]) > 0.2
    # exact log q: the SNIS estimate of Z matches the quadrature value
    w = np.exp(res.log_w_raw - target.exact_log_z())
    assert abs(w.mean() - 1.0) < 3.0 * w.std() / np.sqrt(w.size)


def test_check_weights_names_the_collapse():
    from arbg.reweight import check_weights

    rng = np.random.default_rng(0)
    fine = check_weights(0.1 * rng.standard_normal(2000), n_distinct=1500)
    assert not fine.collapsed and fine.warnings == []
    assert fine.ess_unclipped > 1900 and fine.pareto_k < 0.7
    d = fine.to_dict()
    assert d["collapsed"] is False and d["relative_ess_unclipped"] > 0.95

    lw = rng.standard_normal(2000)
    lw[7] = 60.0  # one sample carries all the weight
    bad = check_weights(lw, lw, n_distinct=1, what="SNIS weights")
    assert bad.collapsed and bad.ess_unclipped == pytest.approx(1.0, abs=1e-6)
    text = "\n".join(bad.warnings)
    assert "SNIS weights collapsed: ESS 1.0 of 2000 clipped" in text
    assert "1 distinct conformation" in text
    # heavy tails: weights from a Pareto law of shape 1 (k = 1)
    heavy = check_weights(np.log1p(rng.pareto(1.0, 5000)))
    assert heavy.pareto_k > 0.7 and any("Pareto k" in w for w in heavy.warnings)
    # clipped and unclipped ESS are both reported, and differ
    clipped = np.where(lw > 5, -np.inf, lw)
    both = check_weights(lw, clipped)
    assert both.ess_clipped > 100 * both.ess_unclipped


def test_check_weights_of_unclipped_weights_says_so():
    from arbg.reweight import check_weights

    lw = np.zeros(200)
    lw[0] = 50.0
    text = "\n".join(check_weights(lw, what="SMC weights").warnings)
    assert "SMC weights collapsed: ESS 1.0 of 200 (0.50%; unclipped weights)" in text
    assert "clipped (" not in text


def test_mixture_log_weights_pool_a_plain_and_a_tilted_gaussian_run():
    """MBAR on an analytic target: mu = N(0, 1), run 1 under the bias b(x) = -a x samples
    N(a, 1) with free energy f_1 = -log E_mu[exp(a x)] = -a^2 / 2."""
    rng = np.random.default_rng(0)
    a, n = 2.0, 20_000
    x = np.concatenate([rng.normal(0.0, 1.0, n), rng.normal(a, 1.0, n)])
    bias = np.stack([np.zeros_like(x), -a * x])
    log_w, f = mixture_log_weights(bias, [n, n])
    assert f[0] == 0.0 and f[1] == pytest.approx(-a * a / 2, abs=0.05)
    assert np.exp(logsumexp(log_w)) == pytest.approx(1.0)
    tail = 1.0 - 0.5 * (1.0 + math.erf(2.5 / math.sqrt(2.0)))  # P(x > 2.5) = 0.0062
    for values, exact in ((x, 0.0), (x**2, 1.0), ((x > 2.5).astype(float), tail)):
        mean, se = weighted_mean(values, log_w)
        assert abs(float(mean) - exact) < 4 * float(se) + 1e-3, (mean, se, exact)
    # pooled weights are bounded by 1/N_0: far flatter than the biased run's own +b weights
    assert kish_ess(log_w) > 0.6 * 2 * n
    assert kish_ess(-a * x[n:]) < 0.1 * n


def test_mixture_log_weights_of_one_run_are_its_own_bias_weights():
    rng = np.random.default_rng(1)
    b = rng.normal(size=50)
    log_w, f = mixture_log_weights(b[None], [50])
    np.testing.assert_allclose(log_w, normalize_log_weights(b), atol=1e-12)
    np.testing.assert_allclose(mixture_log_weights(np.zeros((1, 7)), [7])[0], -np.log(7))
    with pytest.raises(ValueError, match="sum to 50"):
        mixture_log_weights(b[None], [49])
    with pytest.raises(ValueError, match=r"\[K, F\]"):
        mixture_log_weights(b, [50])
    with pytest.raises(ValueError, match="non-finite"):
        mixture_log_weights(np.full((1, 2), np.inf), [2])
