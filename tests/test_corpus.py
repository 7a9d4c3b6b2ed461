import dataclasses
import io
import json
import tarfile

import numpy as np
import pytest

import arbg.data.corpora as C
from arbg.cli import main
from arbg.data.corpora import CorpusConfig, run_corpus
from arbg.data.loaders import load_corpus, load_many_peptides, load_many_peptides_eval
from arbg.data.sequences import kmer_sequences, parse_sequences, split_sequences

# tiny runs: 4 frames per train/val sequence, 6 per test sequence, 2 frames per chunk
CFG = CorpusConfig(
    ns=0.004, test_ns=0.006, fractions=(0.5, 0.0, 0.5), seed=0, warmup_ps=0.2, chunk_frames=2
)
SEQS = ["AA", "GA"]


def test_splits_by_sequence_disjoint_and_complete():
    seqs = kmer_sequences(2)
    assert len(seqs) == 400 == len(set(seqs)) and seqs[0] == "AA"
    s = split_sequences(seqs, (0.8, 0.1, 0.1), seed=3)
    assert [len(s[k]) for k in ("train", "val", "test")] == [320, 40, 40]
    sets = [set(v) for v in s.values()]
    assert set().union(*sets) == set(seqs) and sum(map(len, sets)) == len(seqs)
    assert s == split_sequences(list(reversed(seqs)), (0.8, 0.1, 0.1), seed=3)  # deterministic
    assert s != split_sequences(seqs, (0.8, 0.1, 0.1), seed=4)
    rng = np.random.default_rng(0)
    for n in range(1, 9):
        fr = rng.dirichlet(np.ones(3))
        fr[2] = 1.0 - fr[0] - fr[1]
        s = split_sequences(seqs[:n], fr, seed=n)
        members = [x for v in s.values() for x in v]
        assert sorted(members) == sorted(seqs[:n]) and len(set(members)) == n
    sample = kmer_sequences(3, sample=25, seed=1)
    assert len(set(sample)) == 25 and all(len(x) == 3 for x in sample)
    assert sample == kmer_sequences(3, sample=25, seed=1) != kmer_sequences(3, sample=25, seed=2)
    big = kmer_sequences(6, sample=5, seed=0)  # 64M k-mers: drawn, never listed
    assert len(set(big)) == 5 and all(len(x) == 6 for x in big)


def test_bad_input_raises_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown residue letter.*'Z'"):
        parse_sequences("AA,AZ")
    with pytest.raises(ValueError, match="empty sequence list"):
        parse_sequences([])
    with pytest.raises(ValueError, match="empty sequence list"):
        parse_sequences(" , ")
    with pytest.raises(ValueError, match="sum to 1"):
        split_sequences(["AA", "AG"], (0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match=">= 0"):
        CorpusConfig(fractions=(0.5, 0.6, -0.1))
    with pytest.raises(ValueError, match="three split fractions"):
        CorpusConfig(fractions=(0.5, 0.5))
    with pytest.raises(ValueError, match="unknown force field"):
        CorpusConfig(force_field="charmm")
    with pytest.raises(ValueError, match="empty sequence list"):
        run_corpus(tmp_path / "c", [], CFG, progress=False)
    with pytest.raises(ValueError, match="--sample"):
        kmer_sequences(2, sample=401)
    with pytest.raises(ValueError, match="too many"):
        kmer_sequences(5)
    # the command reports them (exit 2) before running anything
    out = tmp_path / "cli"
    assert main(["corpus", "--sequences", "AA,AB", "--out", str(out), "--quiet"]) == 2
    assert (
        main(
            [
                "corpus",
                "--sequences",
                "AA",
                "--split",
                "0.5",
                "0.5",
                "0.5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert main(["corpus", "--out", str(out), "--quiet"]) == 2  # nothing to resume
    assert not (out / "manifest.json").exists()


def _frames(root, seq):
    with np.load(root / "sequences" / f"{seq}.npz") as z:
        return z["positions"]


def test_corpus_layout_kill_and_resume(tmp_path, monkeypatch):
    full = tmp_path / "full"
    m = run_corpus(full, SEQS, CFG, progress=False)
    expected = {s: (6 if m["sequences"][s]["split"] == "test" else 4) for s in SEQS}
    assert sorted(m["splits"]["train"] + m["splits"]["test"]) == SEQS and not m["splits"]["val"]
    assert m["totals"] == {
        "sequences": 2,
        "done": 2,
        "failed": 0,
        "frames": 10,
        "ns_done": 0.01,
        "ns_total": 0.01,
    }
    assert m["force_field"]["files"] == ["amber99sbildn.xml", "amber99_obc.xml"]
    assert m["temperature_k"] == 310.0 and m["termini"].startswith("zwitterionic")
    assert json.loads((full / "manifest.json").read_text()) == m
    for s in SEQS:
        e = m["sequences"][s]
        x = _frames(full, s)
        assert e["status"] == "done" and x.dtype == np.float32
        assert x.shape == (expected[s], e["n_atoms"], 3) == (e["n_frames"], e["n_atoms"], 3)
        meta = json.loads((full / "sequences" / f"{s}.json").read_text())
        assert meta["sequence"] == s and meta["n_frames"] == expected[s]
        assert meta["system"]["forcefield"] == ["amber99sbildn.xml", "amber99_obc.xml"]
        assert not meta["system"]["capped"] and meta["seed"] == e["seed"]
        assert (full / "sequences" / f"{s}.pdb").read_text().count("ATOM") == e["n_atoms"]
    assert not (full / "work").exists()

    # the same corpus, killed twice: after its first sequence, then inside the second one
    part = tmp_path / "part"
    m1 = run_corpus(part, SEQS, CFG, progress=False, max_sequences=1)
    assert m1["totals"]["done"] == 1
    first = next(s for s in SEQS if m1["sequences"][s]["status"] == "done")
    second = next(s for s in SEQS if s != first)
    assert m1["sequences"][second]["status"] == "pending"
    real_run_md = C.run_md

    def killed_after_one_chunk(system, work, md_cfg, progress=False):
        real_run_md(system, work, dataclasses.replace(md_cfg, ns=0.002), progress=False)
        raise KeyboardInterrupt  # as if the process were killed here

    monkeypatch.setattr(C, "run_md", killed_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_corpus(part, SEQS, CFG, progress=False)
    m2 = json.loads((part / "manifest.json").read_text())
    assert m2["sequences"][second]["status"] == "partial"
    assert m2["sequences"][second]["frames_done"] == 2
    assert not (part / "sequences" / f"{second}.npz").exists()
    monkeypatch.setattr(C, "run_md", real_run_md)
    m3 = run_corpus(part, SEQS, CFG, progress=False)  # resumes inside the second sequence
    assert m3["totals"] == m["totals"] and not (part / "work").exists()
    for s in SEQS:  # nothing lost, nothing duplicated: the uninterrupted frames exactly
        np.testing.assert_array_equal(_frames(part, s), _frames(full, s))

    # a finished corpus is skipped; other settings or sequences are refused
    monkeypatch.setattr(C, "run_md", lambda *a, **k: pytest.fail("finished: no MD expected"))
    assert run_corpus(part, list(reversed(SEQS)), CFG, progress=False)["totals"]["done"] == 2
    assert run_corpus(part, progress=False)["totals"]["done"] == 2  # resume from the manifest
    with pytest.raises(ValueError, match="different settings.*ns"):
        run_corpus(part, SEQS, dataclasses.replace(CFG, ns=0.008), progress=False)
    with pytest.raises(ValueError, match="other sequences"):
        run_corpus(part, ["AA"], CFG, progress=False)

    # the loader: per-split datasets in canonical order, zero log-weights
    corpus = load_corpus(full)
    assert corpus.splits == {k: v for k, v in m["splits"].items()} and len(corpus) == 2
    for split in ("train", "test"):
        for system, x, lw in corpus.items(split):
            seq = system.spec.sequence
            assert corpus.split_of(seq) == split
            np.testing.assert_array_equal(x, _frames(full, seq))
            assert system.n_atoms == x.shape[1] and np.all(lw == 0)
    ds = corpus.dataset(SEQS[0])
    assert ds.splits == {corpus.split_of(SEQS[0]): [0, expected[SEQS[0]]]}
    assert np.isfinite(ds.system.reduced_energy(ds.positions)).all()


def test_cli_corpus_parallel_workers_and_resume(tmp_path):
    out = tmp_path / "c"
    args = [
        "corpus",
        "--sequences",
        "GA,AA",
        "--ns",
        "0.002",
        "--warmup-ps",
        "0.2",
        "--chunk-frames",
        "2",
        "--split",
        "0.5",
        "0",
        "0.5",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args + ["--workers", "2"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["totals"]["done"] == 2 and m["totals"]["frames"] == 4
    assert m["config"]["force_field"] == "fast-implicit"
    assert main(["corpus", "--out", str(out), "--quiet"]) == 0  # resume: all done
    # the same MD seed per sequence, whatever the process: a prefix of the longer runs
    ref = tmp_path / "ref"
    run_corpus(ref, SEQS, CFG, progress=False, max_sequences=2)
    for s in SEQS:
        np.testing.assert_array_equal(_frames(out, s), _frames(ref, s)[:2])


# -- ManyPeptidesMD layout


def _write_pdb_in_other_order(system, x0, path):
    """A PDB of `system` with the atoms of every residue in reverse order; returns the order."""
    from openmm import app

    perm = [a.index for res in system.omm_topology.residues() for a in list(res.atoms())[::-1]]
    atoms = list(system.omm_topology.atoms())
    top = app.Topology()
    chain = top.addChain()
    residues = {}
    for i in perm:
        a = atoms[i]
        if a.residue.index not in residues:
            residues[a.residue.index] = top.addResidue(a.residue.name, chain)
        top.addAtom(a.name, a.element, residues[a.residue.index])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        app.PDBFile.writeFile(top, x0[perm] * 10.0, f)
    return np.array(perm)


def _add(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_many_peptides_loader_reads_shards_and_eval_files(tmp_path):
    from arbg.chem.systems import build_system, make_spec

    system = build_system(make_spec(sequence="AG"))  # the published force field (amber14)
    rng = np.random.default_rng(0)
    x = (system.positions[None] + rng.normal(scale=0.01, size=(5, system.n_atoms, 3))).astype(
        np.float32
    )  # canonical order
    root = tmp_path / "mpmd"
    perm = _write_pdb_in_other_order(system, system.positions, root / "pdbs" / "train" / "AG.pdb")
    assert not np.array_equal(perm, np.arange(system.n_atoms))
    x_pdb = x[:, perm]  # what the shards hold: the PDB's atom order
    shards = root / "webdatasets" / "single_frames"
    shards.mkdir(parents=True)
    with tarfile.open(shards / "0000.tar", "w") as tf:
        for i in (4, 0, 2):
            _add(tf, f"AG_{i}.bin", x_pdb[i].astype("<f4").tobytes())
        _add(tf, "GG_0.bin", np.zeros((17, 3), "<f4").tobytes())  # no PDB: skipped
        _add(tf, "AG_0.json", b"{}")  # not a frame
    with tarfile.open(shards / "0001.tar", "w") as tf:
        for i in (3, 1):
            _add(tf, f"AG_{i}.bin", x_pdb[i].astype("<f4").tobytes())
    corpus = load_many_peptides(root)
    assert corpus.splits == {"train": ["AG"]}
    ds = corpus.dataset("AG")
    np.testing.assert_array_equal(ds.positions, x)  # exact, back in canonical order
    assert ds.metadata["frame_indices"] == [0, 1, 2, 3, 4]
    assert ds.system.n_atoms == system.n_atoms and ds.splits == {"train": [0, 5]}
    [(sys_, pos, lw)] = corpus.items("train")
    np.testing.assert_array_equal(pos, x)
    np.testing.assert_array_equal(lw, 0)
    assert sys_ is ds.system or sys_.n_atoms == system.n_atoms
    assert len(load_many_peptides(root, max_frames=2).dataset("AG")) == 2
    with pytest.raises(ValueError, match="no frames for sequence"):
        load_many_peptides(root, sequences=["AA"])

    # evaluation file: trajectories_subsampled/{split}/{n}AA/{SEQ}_subsampled.npz
    ev = tmp_path / "eval"
    _write_pdb_in_other_order(system, system.positions, ev / "pdbs" / "test" / "AG.pdb")
    npz = ev / "trajectories_subsampled" / "test" / "2AA" / "AG_subsampled.npz"
    npz.parent.mkdir(parents=True)
    np.savez(
        npz,
        positions=x_pdb,
        tica_projection=np.eye(3),
        tica_mean=np.zeros(3),
        tica_dim=np.array(2),
        sequence=np.array("AG"),
    )
    d = load_many_peptides_eval(ev, "AG")
    np.testing.assert_array_equal(d.positions, x)
    assert d.splits == {"test": [0, 5]} and d.metadata["tica"]["tica_dim"] == 2
