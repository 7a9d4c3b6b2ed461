"""Tests of arbg.experiments.zeroshot: a real (tiny) corpus, a briefly trained transferable model,
the
per-sequence table, resume, and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_transferable import ASSET, COND, _cfg

from arbg.cli import main
from arbg.data.corpora import CorpusConfig, run_corpus
from arbg.data.loaders import load_corpus
from arbg.experiments.zeroshot import ZeroShotConfig, evaluate_zero_shot
from arbg.train.transferable import TransferableTrainer

torch.set_num_threads(1)

# 20 frames per train sequence, 100 per test sequence, one frame per 100 MD steps
CORPUS = CorpusConfig(
    ns=0.002, test_ns=0.01, fractions=(0.5, 0.0, 0.5), seed=0, warmup_ps=0.2, frame_interval_ps=0.1
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("zs")
    run_corpus(root / "corpus", ["AA", "AG", "GA", "GG"], CORPUS, progress=False)
    corpus = load_corpus(root / "corpus")
    TransferableTrainer(corpus, root / "train", _cfg(steps=8), COND, progress=False).run()
    return root, corpus


def test_zero_shot_table_resume_and_errors(trained, tmp_path):
    root, corpus = trained
    ckpt = root / "train" / "last"
    cfg = ZeroShotConfig(n_samples=300, n_eval=20, tica_lag=2)
    res = evaluate_zero_shot(ckpt, root / "corpus", tmp_path / "zs", cfg)
    test = corpus.splits["test"]
    assert [r["sequence"] for r in res["rows"]] == test and res["seen_in_training"] == []
    for r in res["rows"]:
        assert r["energy_evaluations"] == 300
        # the row's ESS is the Kish ESS of the run's stored (clipped, normalised) weights
        with np.load(tmp_path / "zs" / r["sequence"] / "samples.npz") as f:
            w = np.exp(f["log_w"])
        assert r["ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-9)
        assert r["md_matched_frames"] == 3  # 300 MD steps at 100 steps per frame
        for ens in ("proposal", "reweighted_resampled", "md_floor", "md_matched"):
            assert r[ens]["t_w2"] >= 0.0, (ens, r)
        assert r["proposal"]["e_w2"] > r["md_floor"]["e_w2"]  # an 8-step model is far from MD
    table = (tmp_path / "zs" / "table.md").read_text()
    assert all(f"| {s} |" in table for s in test) and f"| mean ({len(test)}) |" in table
    assert json.loads((tmp_path / "zs" / "zero_shot.json").read_text())["rows"] == json.loads(
        json.dumps(res["rows"])
    )

    # a second call reuses the runs and metrics
    samples = tmp_path / "zs" / test[0] / "samples.npz"
    before = samples.stat().st_mtime_ns
    again = evaluate_zero_shot(ckpt, root / "corpus", tmp_path / "zs", cfg)
    assert samples.stat().st_mtime_ns == before
    assert again["rows"][0]["proposal"] == res["rows"][0]["proposal"]
    # other settings: sampled again
    evaluate_zero_shot(
        ckpt,
        root / "corpus",
        tmp_path / "zs",
        ZeroShotConfig(n_samples=200, n_eval=20, tica_lag=2, sequences=test[:1]),
    )
    assert json.loads((tmp_path / "zs" / test[0] / "summary.json").read_text())["n_samples"] == 200

    # training sequences are flagged
    seen = evaluate_zero_shot(
        ckpt,
        root / "corpus",
        tmp_path / "seen",
        ZeroShotConfig(n_samples=50, n_eval=10, tica_lag=2, split="train"),
    )
    assert seen["seen_in_training"] == corpus.splits["train"]

    with pytest.raises(ValueError, match="single-system checkpoint"):
        evaluate_zero_shot(ASSET, root / "corpus", tmp_path / "x", cfg)
    with pytest.raises(ValueError, match="no MD in"):
        evaluate_zero_shot(ckpt, root / "corpus", tmp_path / "x", ZeroShotConfig(sequences=["WW"]))
    with pytest.raises(ValueError, match="no finished sequences to evaluate"):
        evaluate_zero_shot(ckpt, root / "corpus", tmp_path / "x", ZeroShotConfig(split="val"))


def test_cli_zero_shot(trained, tmp_path, capsys):
    root, corpus = trained
    seq = corpus.splits["test"][0]
    rc = main(
        [
            "zero-shot",
            str(root / "train" / "last"),
            "--corpus",
            str(root / "corpus"),
            "--out",
            str(tmp_path / "cli"),
            "--sequences",
            seq.lower(),
            "--n",
            "64",
            "--n-eval",
            "10",
            "--tica-lag",
            "2",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert f"| {seq} |" in out and "mean over 1 sequences" in out
    assert (tmp_path / "cli" / "table.html").exists()


def test_zero_shot_summary_says_worse_and_collapsed():
    """Issue 27: 'T-W2 0.456 -> 1.086' read like success; now it says worse, and the collapse."""
    from arbg.experiments.zeroshot import zero_shot_summary

    def row(seq, ess, warnings):
        return {"sequence": seq, "ess": ess, "warnings": warnings}

    result = {
        "rows": [
            row("WF", 1.0, ["importance weights collapsed: ESS 1.0 of 300 clipped"]),
            row("YK", 1.0, ["importance weights collapsed: ESS 1.0 of 500 clipped"]),
        ],
        "mean": {
            "proposal": {"e_w2": 5.34e10, "t_w2": 0.456},
            "reweighted_resampled": {"e_w2": 343.798, "t_w2": 1.086},
        },
    }
    lines = zero_shot_summary(result).splitlines()
    assert "E-W2 (kT)" in lines[0] and "(better)" in lines[0]
    assert "T-W2 (rad) 0.456 -> 1.086 (WORSE than the proposal)" in lines[0]
    assert lines[1].startswith("WARNING: the weights collapsed for 2 of 2 sequences")
    assert any(x.startswith("WARNING: YK: importance weights collapsed") for x in lines)
