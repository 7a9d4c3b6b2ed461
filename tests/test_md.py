import json

import numpy as np
import pytest

from arbg.chem.md import MDConfig, contiguous_splits, load_md_frames, run_md
from arbg.cli import main
from arbg.data.datasets import load_dataset


def test_contiguous_splits():
    s = contiguous_splits(100)
    assert s == {"train": [0, 80], "val": [80, 90], "test": [90, 100]}


def test_md_resume_equals_uninterrupted(tmp_path, aldp):
    cfg = MDConfig(ns=0.02, warmup_ps=0.5, chunk_frames=8, seed=3)
    full = run_md(aldp, tmp_path / "full", cfg, progress=False)
    # interrupted: run 12 frames, then extend to 20 (resumes from the checkpoint)
    part = tmp_path / "part"
    run_md(aldp, part, MDConfig(ns=0.012, warmup_ps=0.5, chunk_frames=8, seed=3), progress=False)
    assert len(load_md_frames(part)) == 12
    run_md(aldp, part, cfg, progress=False)
    a, b = load_md_frames(full), load_md_frames(part)
    assert a.shape == b.shape == (20, 22, 3)
    np.testing.assert_array_equal(a, b)
    meta = json.loads((part / "metadata.json").read_text())
    assert meta["seed"] == 3 and meta["system"]["name"] == "aldp"
    assert meta["versions"]["openmm"]
    with pytest.raises(ValueError, match="different 'seed'"):
        run_md(aldp, part, MDConfig(ns=0.03, seed=4), progress=False)


def test_cli_md_and_loader_round_trip(tmp_path):
    out = tmp_path / "md"
    rc = main(["md", "aldp", "--ns", "0.01", "--warmup-ps", "0.2", "--out", str(out), "--quiet"])
    assert rc == 0
    ds = load_dataset(out)
    frames = load_md_frames(out)
    np.testing.assert_array_equal(ds.positions, frames)
    assert ds.positions.dtype == np.float32 and ds.positions.shape == (10, 22, 3)
    assert (out / "trajectory.dcd").exists() and (out / "topology.pdb").exists()
    # energies of the stored frames are finite and physical (kT ~ tens at 300 K)
    u = ds.system.reduced_energy(ds.positions)
    assert np.isfinite(u).all() and np.all(np.abs(u) < 200)
    # the DCD + PDB written for viewers loads back through the generic path, same frames
    ds2 = load_dataset(out / "trajectory.dcd", topology=out / "topology.pdb", system=ds.system)
    np.testing.assert_allclose(ds2.positions, frames, atol=1e-5)


def test_loader_npy_in_other_atom_order_and_published_layout(tmp_path, aldp):
    rng = np.random.default_rng(0)
    x = (aldp.positions[None] + rng.normal(scale=0.002, size=(30, 22, 3))).astype(np.float32)
    # a PDB in a different atom order: the build order (to_original)
    perm = aldp.to_original
    import mdtraj

    top = aldp.topology.subset(np.arange(22))  # copy
    traj = mdtraj.Trajectory(x, top)
    order = np.argsort(perm)  # any permutation
    shuffled = traj.atom_slice(order[::-1].copy())
    pdb = tmp_path / "aldp_300K" / "aldp_300K.pdb"
    pdb.parent.mkdir()
    shuffled[0].save_pdb(str(pdb))
    for name, sl in [("train", slice(0, 20)), ("val", slice(20, 25)), ("test", slice(25, 30))]:
        np.save(pdb.parent / f"aldp_300K_{name}.npy", shuffled.xyz[sl])
    ds = load_dataset(pdb.parent, system=aldp)
    np.testing.assert_allclose(ds.positions, x, atol=1e-6)
    assert ds.splits == {"train": [0, 20], "val": [20, 25], "test": [25, 30]}
    # plain .npy + PDB
    np.save(tmp_path / "frames.npy", shuffled.xyz)
    ds2 = load_dataset(tmp_path / "frames.npy", topology=pdb, system=aldp)
    np.testing.assert_allclose(ds2.positions, x, atol=1e-6)


def test_loader_errors(tmp_path, aldp):
    pdb = tmp_path / "a.pdb"
    aldp.save_pdb(pdb)
    bad = np.zeros((4, 21, 3), dtype=np.float32)
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"expected \[frames, 22, 3\]"):
        load_dataset(tmp_path / "bad.npy", topology=pdb, system=aldp)
    nan = np.repeat(aldp.positions[None], 3, 0).astype(np.float32)
    nan[1, 3, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ValueError, match="NaN"):
        load_dataset(tmp_path / "nan.npy", topology=pdb, system=aldp)
    with pytest.raises(ValueError, match="topology"):
        load_dataset(tmp_path / "nan.npy")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "absent")
    # a topology of another peptide cannot be matched
    from arbg.chem.systems import build_system

    other = build_system("aaa")
    with pytest.raises(ValueError, match="cannot match atom"):
        load_dataset(tmp_path / "nan.npy", topology=pdb, system=other)
