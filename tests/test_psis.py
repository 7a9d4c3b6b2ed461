"""Pareto-smoothed importance sampling against a case with a known weight tail.

Proposal q = Exp(1), target p = Exp(lam): the weights w = lam exp((1 - lam) x) have a Pareto tail
of shape k = 1 - lam under q, and E_p[x] = 1 / lam.
"""

from __future__ import annotations

import numpy as np
import pytest

from arbg.reweight import normalize_log_weights, psis


def _exp_case(lam: float, seed: int, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).exponential(1.0, n)
    return x, np.log(lam) + (1.0 - lam) * x


@pytest.mark.parametrize("lam", [0.8, 0.5])
def test_pareto_k_recovers_the_known_tail_shape(lam):
    ks = [psis(_exp_case(lam, seed)[1]).pareto_k for seed in range(4)]
    assert np.mean(ks) == pytest.approx(1.0 - lam, abs=0.08)


def test_psis_weights_estimate_the_mean_and_keep_the_order():
    x, lw = _exp_case(0.8, seed=7)
    res = psis(lw)
    w = np.exp(res.log_w)
    assert np.isclose(w.sum(), 1.0)
    assert np.sum(w * x) == pytest.approx(1.25, rel=0.03)
    assert res.tail_length == int(np.ceil(min(0.2 * x.size, 3 * np.sqrt(x.size))))
    order = np.argsort(lw)
    assert np.all(np.diff(res.log_w[order]) >= -1e-12)  # smoothing keeps the ranks
    assert res.log_w.max() <= normalize_log_weights(lw).max() + 1e-12  # the largest shrinks
    untouched = order[: x.size - res.tail_length - 1]
    shift = res.log_w[untouched] - normalize_log_weights(lw)[untouched]
    assert np.ptp(shift) < 1e-9  # below the tail only the normalisation changes


def test_psis_zero_weights_and_short_input():
    lw = np.r_[np.random.default_rng(0).normal(size=200), -np.inf]
    res = psis(lw)
    assert res.log_w[-1] == -np.inf and np.isfinite(res.pareto_k)
    assert psis(np.zeros(4)).pareto_k == np.inf


def test_population_weights_psis_option():
    from arbg.eval.evaluate import population_log_weights

    x, lw = _exp_case(0.8, seed=1, n=2000)
    out, what = population_log_weights(np.zeros_like(lw), lw, "psis")
    np.testing.assert_allclose(out, psis(lw).log_w)
    assert what["population_weights"] == "psis" and "PSIS" in what["populations"]
