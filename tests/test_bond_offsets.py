"""Bond offsets (``Standardization.parents``, ``arbg train --bond-offsets``): each atom modelled as
its offset from its earlier bonded neighbour. The map is unit lower-triangular (Jacobian 1), a
prefix of tokens fixes the atoms it covers, and a trained model's drawn log q equals its
teacher-forced log q at the same conformations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arbg.nn.coordinates import Standardization, fit_standardization
from arbg.sampling.sampler import TransformerProposal, generate, log_q_at
from arbg.train.checkpoints import load_checkpoint
from arbg.train.trainer import train
from tests.test_train import synthetic_dataset, tiny_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def frames_and_std(aldp):
    x = synthetic_dataset(n_frames=40, noise_nm=0.01).positions.astype(np.float64)
    std = fit_standardization(x, "gauge", aldp.gauge_atoms, aldp.bond_parents)
    return x, std


def test_parents_are_earlier_bonded_atoms_and_gauge_atoms_stay_absolute(aldp, frames_and_std):
    _, std = frames_and_std
    bonds = {tuple(sorted(b)) for b in aldp.bonds.tolist()}
    first_gauge = min(aldp.gauge_atoms)
    for k, p in enumerate(std.parents):
        if p >= 0:
            assert p < k and (p, k) in bonds
        if aldp.element[k] == 1:  # every hydrogen hangs on its heavy atom
            assert aldp.element[p] != 1
        elif k in aldp.gauge_atoms or k < first_gauge:  # no chain has to close on the gauge
            assert p == -1
        else:
            assert p >= 0
    assert list(std.parents) == aldp.bond_parents.tolist()
    with pytest.raises(ValueError, match="does not precede"):
        Standardization(0.2, 4, "gauge", (0, 1, 2), parents=(-1, -1, -1, 3))
    with pytest.raises(ValueError, match="gauge atoms must have absolute"):
        Standardization(0.2, 4, "gauge", (0, 1, 2), parents=(-1, 0, -1, 1))
    with pytest.raises(ValueError, match="need the gauge frame"):
        Standardization(0.2, 4, "centroid", parents=(-1, 0, 1, 2))


def test_offsets_round_trip_keep_the_gauge_and_have_jacobian_one(aldp, frames_and_std):
    x, std = frames_and_std
    plain = Standardization(std.std_nm, std.n_atoms, "gauge", std.gauge_atoms)
    z = std.forward(x)
    assert z.shape == (len(x), plain.n_coords)
    np.testing.assert_allclose(std.inverse(z), plain.inverse(plain.forward(x)), atol=1e-12)
    zt = std.forward(torch.as_tensor(x))
    np.testing.assert_allclose(std.inverse(zt).numpy(), std.inverse(z), atol=1e-12)
    # bond vectors are tokens: HA's three tokens are g_HA - g_CA (in std units)
    g = plain.inverse(plain.forward(x))
    k = aldp.atom_names.index("HA")
    cols = np.flatnonzero(std.coord_index[0] == k)
    np.testing.assert_allclose(z[:, cols] * std.std_nm, g[:, k] - g[:, std.parents[k]], atol=1e-12)
    # the linear map between offsets and gauge coordinates has determinant 1
    n = std.n_atoms
    plain_g = Standardization(1.0, n, "gauge", std.gauge_atoms)
    offs = Standardization(1.0, n, "gauge", std.gauge_atoms, parents=std.parents)
    # inverse maps modelled coordinates to gauge positions: on the modelled subspace its matrix
    # is unit lower-triangular (parents precede children)
    m = offs.inverse(np.eye(offs.n_coords)).reshape(offs.n_coords, 3 * n)
    keep = plain_g.coord_index[0] * 3 + plain_g.coord_index[1]
    m = m[:, keep]
    assert np.linalg.det(m) == pytest.approx(1.0, abs=1e-12)
    assert Standardization.from_dict(std.to_dict()) == std


def test_trained_with_offsets_draws_its_own_log_q_and_prefixes_fix_their_atoms(tmp_path):
    ds = synthetic_dataset()
    cfg = tiny_config(steps=6, bond_offsets=True)
    ck = load_checkpoint(train(ds, tmp_path / "run", cfg, progress=False))
    assert ck.standardization.parents is not None
    b = generate(ck.model, ck.binning, ck.standardization, 16, seed=1, feats=ck.feats)
    lq, _ = log_q_at(ck.model, ck.binning, ck.standardization, b.coords, feats=ck.feats)
    np.testing.assert_allclose(lq, b.log_q, rtol=1e-5, atol=1e-3)
    # a prefix of tokens gives the same first atoms as the finished conformation
    sampler = TransformerProposal(
        ck.model,
        ck.binning,
        ck.standardization,
        feats=ck.feats,
        generator=torch.Generator().manual_seed(3),
    )
    state = sampler.start(4)
    sampler.extend(state, 3 * 12)
    prefix = sampler.coords(state)  # [4, 36]
    sampler.extend(state, sampler.n_units - 3 * 12)
    full = sampler.finish(state)
    np.testing.assert_allclose(prefix, full[:, :12].reshape(4, 36), atol=1e-12)
    with pytest.raises(ValueError, match="needs the gauge frame"):
        train(ds, tmp_path / "c", tiny_config(bond_offsets=True, frame="centroid"), progress=False)
