"""Bond offsets (``Standardization.parents``, ``arbg train --bond-offsets``): each atom modelled as
its offset from its earlier bonded neighbour, optionally in a local frame of earlier atoms
(``frame_refs``, ``--local-frames``). Both maps have Jacobian 1, a prefix of tokens fixes the
atoms it covers, and a trained model's drawn log q equals its teacher-forced log q at the same
conformations."""

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
    std = fit_standardization(x, "gauge", aldp.gauge_atoms, aldp.bond_parents())
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
    assert list(std.parents) == aldp.bond_parents().tolist()
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


@pytest.mark.parametrize(
    ("local_frames", "gauge"), [(False, "central"), (True, "central"), (True, "start")]
)
def test_trained_with_offsets_draws_its_own_log_q_and_prefixes_fix_their_atoms(
    tmp_path, local_frames, gauge
):
    ds = synthetic_dataset()
    cfg = tiny_config(steps=6, bond_offsets=True, local_frames=local_frames, gauge=gauge)
    ck = load_checkpoint(train(ds, tmp_path / "run", cfg, progress=False))
    assert ck.standardization.parents is not None
    assert (ck.standardization.frame_refs is not None) == local_frames
    want = ds.system.start_gauge_atoms if gauge == "start" else ds.system.gauge_atoms
    assert ck.standardization.gauge_atoms == want
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


def test_frame_refs_are_earlier_bonded_atoms(aldp):
    bonds = {tuple(sorted(b)) for b in aldp.bonds.tolist()}
    par = aldp.bond_parents()
    n_local = 0
    for k, (b, c) in enumerate(aldp.frame_refs().tolist()):
        if b < 0:
            assert c < 0
            continue
        n_local += 1
        p = int(par[k])
        assert p >= 0 and max(p, b, c) < k and len({p, b, c}) == 3
        assert (min(p, b), max(p, b)) in bonds  # e1 lies along a bond
        assert (min(p, c), max(p, c)) in bonds or (min(b, c), max(b, c)) in bonds
    assert n_local >= aldp.n_atoms - 10  # all but the first atoms and the gauge
    # a CH3's later hydrogens are placed by angles alone: c is an earlier hydrogen of the group
    k = aldp.atom_names.index("HB3")
    assert aldp.atom_names[aldp.frame_refs()[k][1]] == "HB2"
    with pytest.raises(ValueError, match="need bond offsets"):
        Standardization(0.2, 4, "gauge", (0, 1, 2), frame_refs=((-1, -1),) * 4)
    with pytest.raises(ValueError, match="two distinct earlier atoms"):
        Standardization(
            0.2,
            4,
            "gauge",
            (0, 1, 2),
            parents=(-1, -1, -1, 2),
            frame_refs=((-1, -1),) * 3 + ((2, 1),),
        )
    with pytest.raises(ValueError, match="4 frame_refs for 5 atoms"):
        Standardization(
            0.2, 5, "gauge", (0, 1, 2), parents=(-1, -1, -1, 2, 3), frame_refs=((-1, -1),) * 4
        )


def test_local_frames_round_trip_rotate_bond_vectors_and_have_jacobian_one(aldp, frames_and_std):
    x, off = frames_and_std
    loc = Standardization(
        off.std_nm,
        off.n_atoms,
        "gauge",
        off.gauge_atoms,
        off.parents,
        tuple(map(tuple, aldp.frame_refs().tolist())),
    )
    z, zo = loc.forward(x), off.forward(x)
    np.testing.assert_allclose(loc.inverse(z), off.inverse(zo), atol=1e-12)
    np.testing.assert_allclose(loc.inverse(torch.as_tensor(z)).numpy(), loc.inverse(z), atol=1e-12)
    np.testing.assert_allclose(loc.forward(torch.as_tensor(x)).numpy(), z, atol=1e-12)
    atom = loc.coord_index[0]
    for k in range(loc.n_atoms):  # a rotation per atom: each offset keeps its length
        cols = atom == k
        np.testing.assert_allclose(
            np.linalg.norm(z[:, cols], axis=1), np.linalg.norm(zo[:, cols], axis=1), atol=1e-12
        )
    # HB2 is placed by angles from CB, CA, HB1: its first local token is -|r| cos(angle at CB)
    k = aldp.atom_names.index("HB2")
    g = off.inverse(zo)
    p, (b, _) = loc.parents[k], loc.frame_refs[k]
    r, u = g[:, k] - g[:, p], g[:, p] - g[:, b]
    expect = np.sum(r * u, axis=1) / np.linalg.norm(u, axis=1) / loc.std_nm
    np.testing.assert_allclose(z[:, np.flatnonzero(atom == k)[0]], expect, atol=1e-12)
    # numerical Jacobian of the inverse on the modelled coordinates: log det = D log std
    keep = loc.coord_index[0] * 3 + loc.coord_index[1]
    z0, eps = z[0], 1e-6
    base = loc.inverse(z0[None])[0].reshape(-1)[keep]
    jac = np.empty((z0.size, z0.size))
    for j in range(z0.size):
        zz = z0.copy()
        zz[j] += eps
        jac[:, j] = (loc.inverse(zz[None])[0].reshape(-1)[keep] - base) / eps
    sign, logdet = np.linalg.slogdet(jac)
    assert sign == 1.0
    assert logdet == pytest.approx(z0.size * np.log(loc.std_nm), abs=1e-4)
    # a mirror image flips the third token of every atom, nothing else
    zm, axis = loc.forward(-x), loc.coord_index[1]
    np.testing.assert_allclose(zm[:, axis == 2], -z[:, axis == 2], atol=1e-12)
    np.testing.assert_allclose(zm[:, axis != 2], z[:, axis != 2], atol=1e-12)
    # a prefix fixes its atoms; the not yet generated ones stay finite
    n0 = loc.coords_before_atom(12)
    zp = z.copy()
    zp[:, n0:] = 0.0
    xp = loc.inverse(zp)
    assert np.isfinite(xp).all()
    np.testing.assert_allclose(xp[:, :12], loc.inverse(z)[:, :12], atol=1e-12)
    assert Standardization.from_dict(loc.to_dict()) == loc


def test_start_gauge_leaves_no_heavy_atom_absolute(aldp):
    gauge = aldp.start_gauge_atoms
    assert [aldp.atom_names[k] for k in gauge] == ["CH3", "C", "O"]
    par = aldp.bond_parents(gauge)
    assert np.flatnonzero(par < 0).tolist() == sorted(gauge)  # only the gauge is absolute
    refs = aldp.frame_refs(gauge)
    assert np.flatnonzero(refs[:, 0] < 0).tolist() == [0, 1, 2, 4, 5]  # gauge + first two H
    std = Standardization(0.2, aldp.n_atoms, "gauge", gauge, tuple(par), tuple(map(tuple, refs)))
    x = synthetic_dataset(n_frames=8, noise_nm=0.01).positions.astype(np.float64)
    plain = Standardization(0.2, aldp.n_atoms, "gauge", aldp.gauge_atoms)

    # another gauge is another rigid placement of the same conformation: same internal geometry
    def distances(st: Standardization) -> np.ndarray:
        y = st.inverse(st.forward(x))  # [F, n, 3]
        return np.linalg.norm(y[:, :, None] - y[:, None], axis=-1)  # [F, n, n]

    np.testing.assert_allclose(distances(std), distances(plain), atol=1e-12)


def test_local_frames_and_gauge_are_checked_and_kept_on_resume(tmp_path):
    with pytest.raises(ValueError, match="--local-frames needs --bond-offsets"):
        tiny_config(local_frames=True)
    with pytest.raises(ValueError, match="--gauge start needs the gauge frame"):
        tiny_config(gauge="start", frame="centroid")
    with pytest.raises(ValueError, match="--gauge"):
        tiny_config(gauge="middle")
    ds = synthetic_dataset()
    train(ds, tmp_path / "run", tiny_config(steps=2, bond_offsets=True), progress=False)
    for kw, flag in (({"local_frames": True}, "--local-frames"), ({"gauge": "start"}, "--gauge")):
        with pytest.raises(ValueError, match=flag):
            train(
                ds,
                tmp_path / "run",
                tiny_config(steps=4, bond_offsets=True, **kw),
                progress=False,
            )
