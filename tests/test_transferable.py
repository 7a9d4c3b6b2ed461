"""Tests of arbg.nn.conditioning: conditioning cache, padding invariance, exact sampler log q,
training on a synthetic corpus (loss, resume), zero-shot binding and its errors, and that
single-system checkpoints are unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from arbg.chem.systems import N_ATOM_TYPES, N_RESIDUE_TYPES, build_system, make_spec
from arbg.data.datasets import Dataset
from arbg.data.loaders import Corpus
from arbg.nn.conditioning import (
    BoundModel,
    ConditioningConfig,
    TransferableARBG,
    encode_system,
)
from arbg.nn.coordinates import Binning
from arbg.nn.model import ModelConfig
from arbg.sampling.sampler import TransformerProposal, generate, log_q
from arbg.train.checkpoints import load_checkpoint
from arbg.train.config import TrainConfig
from arbg.train.transferable import TransferableTrainer

torch.set_num_threads(1)

ASSET = Path(__file__).resolve().parents[1] / "src" / "arbg" / "assets" / "aldp" / "checkpoint"
TINY = dict(n_layer=1, n_embd=32, n_head=2, head_dim=16)
COND = ConditioningConfig(n_layer=1, n_head=2, head_dim=16, max_residues=4)
STD, BINNING = 0.3, Binning(256, -4.0, 4.0)


def peptide(seq: str):
    return build_system(make_spec(sequence=seq, fast_implicit=True), minimize=False)


def random_net(seed: int = 0, n_bins: int = 256) -> TransferableARBG:
    """A tiny transferable model with all weights perturbed (the init is uniform/identity)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_bins=n_bins,
        max_atoms=40,
        n_atom_types=N_ATOM_TYPES,
        n_residue_types=N_RESIDUE_TYPES,
        **TINY,
    )
    net = TransferableARBG(cfg, COND)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


def synthetic_corpus(seqs: dict[str, str], n_frames: int = 40, noise_nm: float = 0.01) -> Corpus:
    """Gaussian-perturbed reference positions of each sequence; ``seqs``: sequence -> split."""

    def loader(seq: str, split: str) -> Dataset:
        system = peptide(seq)
        rng = np.random.default_rng(len(seq) * 31 + ord(seq[0]))
        x = system.positions[None] + noise_nm * rng.standard_normal((n_frames, system.n_atoms, 3))
        return Dataset(x.astype(np.float32), system, {split: [0, n_frames]})

    splits: dict[str, list[str]] = {}
    for s, split in seqs.items():
        splits.setdefault(split, []).append(s)
    return Corpus(splits, loader)


def test_encoder_runs_once_per_sequence():
    net = random_net()
    calls = []
    net.encoder.register_forward_hook(lambda *a: calls.append(1))
    enc = encode_system(peptide("AS"), STD, BINNING)
    bound = BoundModel(net, enc)
    assert len(calls) == 1
    batch = generate(
        bound, BINNING, enc.standardization, n=6, seed=1, batch_size=4, chirality="none"
    )  # two chunks, KV cache
    assert batch.bins.shape == (6, enc.n_tokens)
    prop = TransformerProposal(bound, BINNING, enc.standardization, generator=None)
    st = prop.start(3)
    prop.extend(st, prop.n_units)
    assert len(calls) == 1  # never recomputed per token, chunk or population


def test_padding_never_changes_real_likelihoods():
    net = random_net(1)
    short, long_ = (
        encode_system(peptide("GA"), STD, BINNING),
        encode_system(peptide("SA"), STD, BINNING),
    )
    assert short.n_tokens < long_.n_tokens
    g = torch.Generator().manual_seed(0)
    b_short = torch.randint(128, 200, (short.n_tokens,), generator=g)
    b_long = torch.randint(128, 200, (long_.n_tokens,), generator=g)
    with torch.no_grad():
        alone = net.batch_log_prob([short], [b_short])
        mixed = net.batch_log_prob([short, long_, short], [b_short, b_long, b_short])
        long_alone = net.batch_log_prob([long_], [b_long])
        # the conditioning does depend on the sequence (AG has GA's atom count)
        other = net.batch_log_prob([encode_system(peptide("AG"), STD, BINNING)], [b_short])

    # float32 sums over ~100 tokens whose matmuls are blocked differently at another batch
    # shape: the rounding scales with the magnitude (2.6e-6 at -328 nats was seen), so the
    # tolerance is relative. Padding that leaked into real tokens would move log q by >1e-3.
    def close(a, b):
        return abs(float(a - b)) <= 1e-6 * max(1.0, abs(float(a)))

    assert close(alone[0], mixed[0])
    assert close(alone[0], mixed[2])
    assert close(long_alone[0], mixed[1])
    assert abs(float(other[0] - alone[0])) > 1e-4


@pytest.mark.parametrize("seq", ["AA", "GS"])
def test_sampler_log_q_equals_teacher_forced(seq):
    net = random_net(2)
    enc = encode_system(peptide(seq), STD, BINNING)
    bound = BoundModel(net, enc)
    batch = generate(bound, BINNING, enc.standardization, n=5, seed=3, chirality="none")
    # re-encoding the de-quantized samples gives the drawn bins
    z = enc.standardization.forward(batch.coords)
    bins, _ = BINNING.encode(z)
    assert np.array_equal(np.asarray(bins), batch.bins)
    with torch.no_grad():
        tf = net.batch_log_prob([enc] * 5, list(torch.as_tensor(batch.bins)))
    np.testing.assert_allclose(batch.log_pi, tf.numpy(), atol=1e-4)
    np.testing.assert_allclose(batch.log_q, log_q(tf, BINNING, enc.standardization, z), atol=1e-4)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        preset="tiny",
        model_overrides=dict(TINY),
        n_bins=256,
        steps=16,
        batch_size=8,
        eval_every=0,
        eval_frames=8,
        checkpoint_every=0,
        log_every=4,
        seed=3,
        device="cpu",
        lr_adamw=5e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_train_on_corpus_resume_and_zero_shot(tmp_path):
    # WW (val) is beyond the model's atom limit: left out of the val NLL, not a crash
    corpus = synthetic_corpus({"AA": "train", "GS": "train", "AG": "val", "WW": "val"})
    full = TransferableTrainer(corpus, tmp_path / "full", _cfg(), COND, progress=False)
    full.run()
    recs = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").open()]
    assert [r["n_val_sequences"] for r in recs if r.get("event") == "baselines"] == [1]
    losses = [r["loss"] for r in recs if r.get("event") == "train"]
    assert losses[-1] < losses[0] - 0.5, losses
    ev = [r for r in recs if r.get("event") == "eval"][-1]
    assert ev["val_nll"] < np.log(256)
    # interrupted after 8 steps and resumed: the same weights as the uninterrupted run
    TransferableTrainer(
        corpus, tmp_path / "res", _cfg(stop_after_steps=8), COND, progress=False
    ).run()
    res = TransferableTrainer(corpus, tmp_path / "res", _cfg(), COND, progress=False)
    assert res.step == 8
    res.run()
    for (k, a), b in zip(
        full.model.state_dict().items(), res.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), k

    cfg = json.loads((tmp_path / "full" / "last" / "config.json").read_text())
    assert cfg["transferable"] is True
    assert cfg["corpus"]["temperature_k"] == 310.0
    assert cfg["corpus"]["spec"]["forcefield"] == ["amber99sbildn.xml", "amber99_obc.xml"]
    assert cfg["corpus"]["solvent"] == "amber99_obc.xml"
    assert cfg["limits"] == {"max_residues": 2, "max_atoms": 23, "residues": "AGS"}

    # zero-shot: an unseen sequence built with the corpus's force field and temperature
    ck = load_checkpoint(tmp_path / "full" / "best", sequence="SG")
    assert ck.system.spec.forcefield == ("amber99sbildn.xml", "amber99_obc.xml")
    assert ck.system.temperature_k == 310.0
    from arbg.sampling.config import SampleConfig
    from arbg.sampling.runs import run_sampling

    summary = run_sampling(ck, tmp_path / "run", SampleConfig(n=8, seed=0, chirality="zero"))
    assert summary["n_samples"] == 8 and summary["system"] == "SG"
    with pytest.raises(ValueError, match="system"):  # one run directory, one sequence
        run_sampling(
            load_checkpoint(tmp_path / "full" / "best", sequence="GS"),
            tmp_path / "run",
            SampleConfig(n=4, seed=1),
        )

    last = tmp_path / "full" / "last"
    with pytest.raises(ValueError, match="give a sequence"):
        load_checkpoint(last)
    with pytest.raises(ValueError, match="3 residues > max 2"):
        load_checkpoint(last, sequence="AAA")
    with pytest.raises(ValueError, match="24 atoms > max 23"):
        load_checkpoint(last, sequence="SA")
    with pytest.raises(ValueError, match="W never seen in training"):
        load_checkpoint(last, sequence="AW")
    with pytest.raises(ValueError, match="unknown residue letter"):
        load_checkpoint(last, sequence="AX")
    from dataclasses import replace

    from arbg.train.checkpoints import CheckpointMismatchError

    other = replace(ck.binning, n_bins=2 * ck.binning.n_bins)
    with pytest.raises(CheckpointMismatchError, match="binning mismatch"):
        load_checkpoint(last, sequence="SG", binning=other)


def test_single_system_checkpoint_refuses_sequence_and_is_unchanged(tmp_path):
    from arbg.cli import main

    with pytest.raises(ValueError, match="transferable checkpoint"):
        load_checkpoint(ASSET, sequence="AA")
    assert (
        main(["sample", str(ASSET), "--sequence", "AA", "--n", "2", "--out", str(tmp_path / "r")])
        == 2
    )
    ck = load_checkpoint(ASSET)  # strict load: no new parameters or buffers
    m = ck.model
    z = ck.standardization.forward(
        np.asarray(build_system("aldp", minimize=False).positions)[None].repeat(3, 0)
        + 0.01 * np.random.default_rng(0).standard_normal((3, 22, 3))
    )
    bins, _ = ck.binning.encode(z)
    bins = torch.as_tensor(bins).long()
    with torch.no_grad():
        lp = m.log_prob(bins)
        # the pre-transferable forward, written out: embeddings, blocks, head, floor
        tok = m.shift_right(bins)
        f = m.default_features()
        x = m.wte(tok) + m.value_proj(m.value_features(tok))
        x = x + (  # the [T, C] feature embeddings summed, then broadcast over the batch
            m.axis_emb(f.axis)
            + m.atom_emb(f.atom_index)
            + m.atom_type_emb(f.atom_type)
            + m.residue_type_emb(f.residue_type)
            + m.residue_index_emb(f.residue_index)
        )
        T = tok.shape[1]
        rot = (m.rope_cos[:T], m.rope_sin[:T])
        for block in m.blocks:
            x = block(x, rot)
        out = m.head.apply_floor(m.head(m.norm_f(x)), m.bin_floor[:T])
        ref = m.head.log_prob(out, bins).to(torch.float64).sum(-1)
    assert torch.equal(lp, ref)


def test_smc_with_a_bound_model(tmp_path):
    from arbg.sampling.config import SMCConfig
    from arbg.sampling.runs import SamplerParts, run_smc
    from arbg.sampling.sampler import teacher_forced_log_pi

    net = random_net(4)
    calls = []
    net.encoder.register_forward_hook(lambda *a: calls.append(1))
    system = peptide("AGA")  # zwitterionic tripeptide: two interior residue boundaries
    enc = encode_system(system, STD, BINNING)
    bound = BoundModel(net, enc)
    parts = SamplerParts(bound, BINNING, enc.standardization, system, None, "toy")
    summary = run_smc(
        parts, tmp_path / "smc", SMCConfig(n_particles=6, seed=0, early_reject_kt=None)
    )
    assert summary["n_samples"] == 6 and len(calls) == 1
    with np.load(tmp_path / "smc" / "samples.npz") as f:
        bins, stored, coords = f["bins"].astype(np.int64), f["log_q"], f["coords"]
    z = enc.standardization.forward(coords.astype(np.float64))
    expect = log_q(teacher_forced_log_pi(bound, bins), BINNING, enc.standardization, z)
    np.testing.assert_allclose(stored, expect, atol=2e-3)


def test_cli_train_transferable_and_sample(tmp_path, monkeypatch, capsys):
    from arbg.cli import main

    corpus = synthetic_corpus({"AA": "train", "GS": "train"}, n_frames=12)
    monkeypatch.setattr("arbg.cli._model.load_corpus", lambda path: corpus)
    out = tmp_path / "t"
    assert (
        main(
            [
                "train-transferable",
                "CORPUS",
                "--out",
                str(out),
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--n-bins",
                "256",
                "--eval-every",
                "0",
                "--cond-layers",
                "1",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sample",
                str(out / "last"),
                "--sequence",
                "SG",
                "--n",
                "4",
                "--batch-size",
                "4",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["sample", str(out / "last"), "--n", "4", "--out", str(tmp_path / "r2")]) == 2
    assert "give a sequence" in capsys.readouterr().err
