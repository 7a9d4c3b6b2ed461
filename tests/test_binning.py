"""Tests of arbg.nn.coordinates (binning): encode/decode, exact density, clipping, range,
quantization bound."""

import logging

import numpy as np
import pytest
import torch

from arbg.nn.coordinates import (
    Binning,
    _w2_1d,
    default_n_bins,
    fit_binning,
    fit_standardization,
    quantization_bound,
)

torch.set_num_threads(1)


def test_centre_and_uniform_decoding() -> None:
    b = Binning(n_bins=4096, low=-4.5, high=4.5)
    bins = np.arange(4096)
    c = b.centres[bins]
    z = np.random.default_rng(0).uniform(-4.5, 4.5, size=100000)
    enc, n_clip = b.encode(z)
    assert n_clip == 0
    assert np.all(np.abs(b.centres[enc] - z) <= b.width / 2 + 1e-12)
    u = b.decode(np.repeat(bins, 20), generator=np.random.default_rng(1))
    lo, hi = b.edges[np.repeat(bins, 20)], b.edges[np.repeat(bins, 20) + 1]
    assert np.all((u >= lo) & (u <= hi))
    assert u.dtype == np.float64
    # round trip of the integer bins, float64
    np.testing.assert_array_equal(b.encode(c)[0], bins)
    np.testing.assert_array_equal(b.encode(u)[0], np.repeat(bins, 20))


def test_torch_encode_decode() -> None:
    b = Binning(n_bins=256, low=-3.0, high=3.0)
    bins = torch.arange(256).repeat(10)
    g = torch.Generator().manual_seed(0)
    z = b.decode(bins, generator=g)
    assert z.dtype == torch.float64
    enc, n = b.encode(z)
    assert n == 0 and enc.dtype == torch.int64
    assert torch.equal(enc, bins)
    assert torch.equal(b.encode(torch.as_tensor(b.centres)[bins])[0], bins)


def test_clipping_counted(caplog: pytest.LogCaptureFixture) -> None:
    b = Binning(n_bins=10, low=-1.0, high=1.0)
    z = np.array([-5.0, -1.0, 0.0, 0.999, 1.0, 7.0, np.nan])
    with caplog.at_level(logging.WARNING):
        bins, n = b.encode(z)
    assert n == 4  # -5, 1.0 (high is exclusive), 7, nan
    assert bins[0] == 0 and bins[4] == 9 and bins[5] == 9
    assert "clipped" in caplog.text


def test_decode_draws_from_the_bin_and_round_trips_the_dict() -> None:
    b = Binning(n_bins=8, low=0.0, high=8.0)
    z = b.decode(np.array([0, 5] * 500), generator=np.random.default_rng(0))
    assert np.all((z[::2] >= 0) & (z[::2] < 1)) and np.all((z[1::2] >= 5) & (z[1::2] < 6))
    assert abs(z[1::2].mean() - 5.5) < 0.05  # uniform inside the bin
    assert Binning.from_dict(b.to_dict()) == b


def test_dequantized_histogram_integrates_to_one() -> None:
    """1-D: a histogram (the categorical) gives a piecewise-constant density integrating to 1."""
    rng = np.random.default_rng(0)
    b = Binning(n_bins=64, low=-3.0, high=3.0)
    data = rng.normal(size=5000)
    bins, _ = b.encode(data)
    counts = np.bincount(bins, minlength=b.n_bins) + 0.5  # smoothed histogram
    log_p = np.log(counts / counts.sum())  # [L] log bin probabilities
    grid = np.linspace(b.low, b.high, 640001)[:-1] + 0.5 * (b.high - b.low) / 640000  # midpoints
    gbins, n_clip = b.encode(grid)
    assert n_clip == 0
    dens = np.exp(log_p[gbins] - np.log(b.width))  # what sampler.log_q adds per token
    integral = dens.sum() * (b.high - b.low) / 640000
    assert integral == pytest.approx(1.0, abs=1e-9)
    # in nm (std 0.2 nm): add the Jacobian log(1/std); integrate over the nm grid
    std = 0.2
    dens_nm = np.exp(log_p[gbins] - np.log(b.width) - np.log(std))
    assert dens_nm.sum() * std * (b.high - b.low) / 640000 == pytest.approx(1.0, abs=1e-9)


def test_fit_binning_covers_largest_radius() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 10, 3)) * np.array([0.1, 0.1, 1.0])  # elongated along z
    st = fit_standardization(x)
    z = st.forward(x)
    b = fit_binning(z, margin=1.1)
    assert b.n_bins == 4096 and b.low == -b.high
    xs = st.inverse(z) / st.std_nm  # [F, n, 3] std units, all atoms
    r = np.linalg.norm(xs, axis=-1).max()
    assert b.high == pytest.approx(1.1 * r)
    assert b.high > np.abs(z).max()  # larger than the per-axis extreme
    assert default_n_bins(22) == 4096 and default_n_bins(63) == 8192
    assert fit_binning(z, n_bins=128).n_bins == 128


def test_w2_1d() -> None:
    a = np.array([0.0, 1.0, 2.0])
    assert _w2_1d(a, a + 0.5) == pytest.approx(0.25)
    # unequal sizes: {0} vs {0, 1}: half the mass moves by 1 -> W2^2 = 0.5
    assert _w2_1d(np.array([0.0]), np.array([0.0, 1.0])) == pytest.approx(0.5)
    # same distribution, duplicated samples
    assert _w2_1d(a, np.repeat(a, 3)) == pytest.approx(0.0)


def test_quantization_bound_decreases_with_bins() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 6, 3)) * 0.2
    st = fit_standardization(x)

    def energy(xx: np.ndarray) -> np.ndarray:  # harmonic bonds between consecutive atoms
        d = np.linalg.norm(np.diff(xx, axis=1), axis=-1)
        return 500.0 * ((d - 0.28) ** 2).sum(axis=1)

    res = quantization_bound(x, st, [16, 256, 4096], energy, np.random.default_rng(0))
    w2 = [r["e_w2"] for r in res]
    assert w2[0] > w2[1] > w2[2]
    assert w2[2] < 0.01 * w2[0]
    assert all(r["n_clipped"] == 0 and r["n_nonfinite_dequant"] == 0 for r in res)
