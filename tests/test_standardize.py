"""Tests of arbg.standardize: centring, last-atom constraint, Jacobian, rotations."""

import math

import numpy as np
import pytest
import torch

from arbg.standardize import (
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
