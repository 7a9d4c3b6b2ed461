"""Several MD runs joined into one training set (``join_datasets``, ``arbg train RUN1 RUN2``)
and the rotor-hydrogen relabelling augmentation (``PeptideSystem.rotor_hydrogens``,
``relabel_rotors``, ``TrainConfig.augment_rotors``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arbg.chem.systems import build_system
from arbg.data.datasets import Dataset, join_datasets
from arbg.reweight import kish_ess
from arbg.train.encoding import relabel_rotors
from arbg.train.trainer import Trainer
from tests.test_train import synthetic_dataset, tiny_config

torch.set_num_threads(1)


def _run(system, n: int, seed: int, weighted: bool) -> Dataset:
    rng = np.random.default_rng(seed)
    pos = system.positions[None] + 0.01 * rng.standard_normal((n, system.n_atoms, 3))
    a, b = int(0.8 * n), int(0.9 * n)
    lw = 3.0 * rng.standard_normal(n) + 50.0 * seed if weighted else None
    return Dataset(
        pos.astype(np.float32),
        system,
        {"train": [0, a], "val": [a, b], "test": [b, n]},
        {"source": f"run{seed}"},
        lw,
    )


def test_join_keeps_every_frame_in_its_split_and_mixes_weights_by_kish_ess(aldp):
    r1, r2 = _run(aldp, 50, 1, True), _run(aldp, 30, 2, True)
    joined = join_datasets([r1, r2])
    assert joined.splits == {"train": [0, 64], "val": [64, 72], "test": [72, 80]}
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(
            joined.split(name), np.concatenate([r1.split(name), r2.split(name)])
        )
    # each run self-normalised (its own bias constant, here 50 kT apart), then weighted by ESS
    w = np.exp(joined.log_weights - joined.log_weights.max())
    w /= w.sum()
    share1 = w[np.r_[0:40, 64:69, 72:77]].sum()
    e1, e2 = kish_ess(r1.log_weights), kish_ess(r2.log_weights)
    assert share1 == pytest.approx(e1 / (e1 + e2), rel=1e-9)
    assert joined.identity()["source"].count(" + ") == 1
    # equilibrium runs keep equal frame weights: the join stays unweighted
    assert not join_datasets([_run(aldp, 20, 3, False), _run(aldp, 10, 4, False)]).weighted


def test_join_refuses_runs_of_another_system(aldp):
    other = build_system("aldp", minimize=False)
    other_spec = other.spec.replace(temperature_k=310.0)
    alien = _run(build_system(other_spec, minimize=False), 10, 5, False)
    with pytest.raises(ValueError, match="cannot join run5: its system"):
        join_datasets([_run(aldp, 10, 1, False), alien])
    with pytest.raises(ValueError, match="no datasets"):
        join_datasets([])


def test_rotor_hydrogens_are_the_methyls_and_their_relabelling_keeps_the_energy(aldp):
    rotors = aldp.rotor_hydrogens
    names = [[aldp.atom_names[i] for i in r] for r in rotors]
    assert names == [["HH31", "HH32", "HH33"], ["HB1", "HB2", "HB3"], ["HH31", "HH32", "HH33"]]
    x = synthetic_dataset(n_frames=6, noise_nm=0.005).positions.astype(np.float64)
    g = torch.Generator().manual_seed(0)
    y = relabel_rotors(torch.as_tensor(x), torch.as_tensor(rotors), g).numpy()
    assert not np.array_equal(x, y)
    np.testing.assert_allclose(aldp.reduced_energy(y), aldp.reduced_energy(x), atol=1e-6)
    # a relabelling that is not a symmetry (a methyl H with the alpha H) changes the energy
    z = x.copy()
    ha = aldp.atom_names.index("HA")
    z[:, [ha, rotors[1, 0]]] = x[:, [rotors[1, 0], ha]]
    assert np.all(np.abs(aldp.reduced_energy(z) - aldp.reduced_energy(x)) > 1.0)


def test_relabel_rotors_applies_cyclic_shifts_only_to_the_rotors():
    n, rotors = 9, torch.tensor([[1, 2, 3], [6, 7, 8]])
    x = torch.arange(n, dtype=torch.float64)[None, :, None].repeat(3000, 1, 3)  # atom ids
    y = relabel_rotors(x, rotors, torch.Generator().manual_seed(1))[..., 0].long()  # [B, n]
    np.testing.assert_array_equal(y[:, [0, 4, 5]], np.tile([0, 4, 5], (3000, 1)))
    for r in rotors.tolist():
        shift = (y[:, r[0]] - r[0]) % 3  # [B]
        for i in range(3):  # the same shift for every member: a cyclic relabelling
            assert torch.equal(y[:, r[i]], r[0] + (i + shift) % 3)
        counts = torch.bincount(shift, minlength=3).numpy()
        assert counts.min() > 900  # all three shifts, about equally often
    again = relabel_rotors(x, rotors, torch.Generator().manual_seed(1))
    assert torch.equal(again[..., 0].long(), y)
    assert relabel_rotors(x, rotors[:0], torch.Generator()) is x


def test_training_with_rotor_relabelling_resumes_bit_exactly(tmp_path):
    ds = synthetic_dataset()
    cfg = tiny_config(steps=8, checkpoint_every=4, augment_rotors=True, augment_rotations=False)
    full = Trainer(ds, tmp_path / "a", cfg, progress=False)
    assert full.rotors is not None and full.rotors.shape == (3, 3)
    full.run()
    part = Trainer(
        ds,
        tmp_path / "b",
        tiny_config(
            steps=8,
            checkpoint_every=4,
            augment_rotors=True,
            augment_rotations=False,
            stop_after_steps=4,
        ),
        progress=False,
    )
    part.run()
    resumed = Trainer(ds, tmp_path / "b", cfg, progress=False)
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the same frames as a plain trainer draws with the same seed, rotors relabelled
    plain = Trainer(ds, tmp_path / "c", tiny_config(steps=8), progress=False)
    fresh = Trainer(ds, tmp_path / "d", cfg, progress=False)
    p_bins, r_bins = plain._draw_batch()[1], fresh._draw_batch()[1]  # [B, D]
    assert not torch.equal(p_bins, r_bins)
    assert torch.equal(torch.sort(p_bins, 1).values, torch.sort(r_bins, 1).values)
