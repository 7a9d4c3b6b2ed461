"""Tests of arbg.nn.coordinates: centring, last-atom constraint, Jacobian, rotations."""

import math

import numpy as np
import pytest
import torch

from arbg.nn.coordinates import (
    Standardization,
    centre_frames,
    fit_standardization,
    random_rotations,
    rotate,
)

torch.set_num_threads(1)


def _frames(rng: np.random.Generator, f: int = 7, n: int = 22) -> np.ndarray:
    return rng.normal(size=(f, n, 3)) * 0.3 + rng.normal(size=(f, 1, 3)) * 5.0  # [F, n, 3] nm


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_inverse_reproduces_centred_frames(lib: str) -> None:
    rng = np.random.default_rng(0)
    x = _frames(rng)
    st = fit_standardization(x)
    xin = x if lib == "numpy" else torch.from_numpy(x)
    z = st.forward(xin)
    assert tuple(z.shape) == (7, 3 * 21)
    back = np.asarray(st.inverse(z))
    np.testing.assert_allclose(back, centre_frames(x), atol=1e-10, rtol=0)
    # the last atom comes only from the constraint
    assert np.allclose(back.sum(axis=1), 0.0, atol=1e-10)


def test_centre_of_geometry_not_mass() -> None:
    x = np.array([[[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]]])  # [1, 3, 3]
    st = Standardization(std_nm=1.0, n_atoms=3)
    z = st.forward(x)
    np.testing.assert_allclose(z[0, :3], [-2.0, 0, 0])


def test_log_det_and_roundtrip_dict() -> None:
    st = Standardization(std_nm=0.163, n_atoms=22)
    assert st.n_coords == 63
    assert st.log_det_forward == pytest.approx(-63 * math.log(0.163))
    assert Standardization.from_dict(st.to_dict()) == st


def test_fit_std_is_rms_of_centred() -> None:
    rng = np.random.default_rng(1)
    x = _frames(rng, f=50, n=10)
    st = fit_standardization(x)
    z = st.forward(x)
    full = centre_frames(x) / st.std_nm
    assert np.sqrt(np.mean(full**2)) == pytest.approx(1.0)
    assert z.shape == (50, 27)


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_rotations_so3_uniformish(kind: str) -> None:
    gen = torch.Generator().manual_seed(0) if kind == "torch" else np.random.default_rng(0)
    R = np.asarray(random_rotations(20000, gen))
    assert R.shape == (20000, 3, 3)
    eye = np.einsum("bij,bkj->bik", R, R)
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(3), eye.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    assert np.abs(R.mean(axis=0)).max() < 0.03  # Haar: E[R] = 0
    # second moment of a Haar rotation: E[R_ij^2] = 1/3
    np.testing.assert_allclose((R**2).mean(axis=0), 1 / 3, atol=0.02)


def test_rotate_keeps_centring_and_distances() -> None:
    rng = np.random.default_rng(2)
    x = centre_frames(_frames(rng, f=4, n=5))
    R = random_rotations(4, rng)
    y = rotate(x, R)
    np.testing.assert_allclose(y.sum(axis=1), 0.0, atol=1e-12)
    d = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1)
    dy = np.linalg.norm(y[:, :, None] - y[:, None], axis=-1)
    np.testing.assert_allclose(d, dy, atol=1e-12)
    yt = rotate(torch.from_numpy(x), torch.from_numpy(R))
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-12)


# ---- gauge frame


def _gauge_std(n_atoms: int = 5, atoms=(1, 2, 3)) -> Standardization:
    return Standardization(std_nm=0.2, n_atoms=n_atoms, frame="gauge", gauge_atoms=atoms)


def test_gauge_forward_is_rotation_translation_invariant_and_inverts() -> None:
    rng = np.random.default_rng(0)
    st = _gauge_std()
    assert st.n_coords == 3 * 5 - 6
    x = rng.standard_normal((4, 5, 3))
    z = st.forward(x)
    assert z.shape == (4, 9)
    R = random_rotations(4, np.random.default_rng(1))
    moved = np.einsum("bij,bnj->bni", R, x) + rng.standard_normal((4, 1, 3))
    np.testing.assert_allclose(st.forward(moved), z, atol=1e-12)
    g = st.inverse(z)  # [4, 5, 3] in the gauge
    a, b, c = st.gauge_atoms
    assert np.all(g[:, a] == 0) and np.all(g[:, b, 1:] == 0) and np.all(g[:, c, 2] == 0)
    assert np.all(g[:, b, 0] > 0) and np.all(g[:, c, 1] > 0)
    # same internal geometry: all pairwise distances preserved
    d = lambda y: np.linalg.norm(y[:, :, None] - y[:, None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(g), d(x), atol=1e-12)
    np.testing.assert_allclose(st.forward(g), z, atol=1e-12)
    # mirror image: stays in the gauge with z -> -z
    gm = st.inverse(st.forward(-x))
    np.testing.assert_allclose(gm, g * np.array([1, 1, -1]), atol=1e-12)
    # torch path agrees
    zt = st.forward(torch.as_tensor(x))
    np.testing.assert_allclose(zt.numpy(), z, atol=1e-12)
    np.testing.assert_allclose(st.inverse(zt).numpy(), g, atol=1e-12)


def test_gauge_jacobian_against_analytic_gaussian() -> None:
    """Three atoms with relative positions r_B, r_C ~ N(0, I_6): the gauge coordinates (a, b, c)
    then have the density 8 pi^2 a^2 c N_6((a,0,0),(b,c,0)), which integrates to one; the
    Jacobian of Standardization.log_det must turn it back into N_6 at every conformation."""
    from scipy import integrate

    st = Standardization(std_nm=0.3, n_atoms=3, frame="gauge", gauge_atoms=(0, 1, 2))
    assert st.n_coords == 3

    def log_pg(a, b, c):  # density of (a, b, c) in nm
        return (
            math.log(8 * math.pi**2)
            + 2 * np.log(a)
            + np.log(c)
            - 3 * math.log(2 * math.pi)
            - 0.5 * (a**2 + b**2 + c**2)
        )

    total = integrate.tplquad(lambda c, b, a: np.exp(log_pg(a, b, c)), 0, 8, -8, 8, 0, 8)[0]
    assert total == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 3, 3))
    r = x[:, 1:] - x[:, :1]  # [50, 2, 3]
    log_target = -3 * math.log(2 * math.pi) - 0.5 * np.sum(r**2, axis=(1, 2))
    z = st.forward(x)  # [50, 3] = (a, b, c) / std
    a, b, c = (z * st.std_nm).T
    log_qz = log_pg(a, b, c) + st.n_coords * math.log(st.std_nm)  # density of z
    np.testing.assert_allclose(log_qz + st.log_det(z), log_target, rtol=1e-12)


def test_gauge_record_round_trip_and_errors() -> None:
    st = _gauge_std()
    assert Standardization.from_dict(st.to_dict()) == st
    with pytest.raises(ValueError, match="lacks frame"):  # no shim for old records
        Standardization.from_dict({"std_nm": 0.1, "n_atoms": 4})
    with pytest.raises(ValueError, match="gauge atoms"):
        Standardization(std_nm=0.1, n_atoms=4, frame="gauge", gauge_atoms=(0, 1, 1))
    with pytest.raises(ValueError, match="unknown frame"):
        Standardization(std_nm=0.1, n_atoms=4, frame="lab")
    with pytest.raises(ValueError, match="pass z"):
        st.log_det()
