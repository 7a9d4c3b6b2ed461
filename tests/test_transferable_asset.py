"""The shipped transferable checkpoint samples a held-out dipeptide zero-shot on the CPU, and
reweighting brings its energies closer to that peptide's MD (issue 7's acceptance)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import arbg
from arbg.cli import main
from arbg.data.loaders import load_corpus
from arbg.eval.evaluate import EvaluateConfig, evaluate_run
from arbg.train.checkpoints import read_config

torch.set_num_threads(1)

ASSETS = Path(arbg.__file__).parent / "assets" / "transferable"


def test_shipped_checkpoint_zero_shot_on_a_held_out_dipeptide(tmp_path):
    config = read_config(ASSETS / "checkpoint")
    heldout = load_corpus(ASSETS / "heldout")
    assert config["transferable"] is True
    assert heldout.splits["test"] == ["GA", "MR", "NG", "PA", "RD", "YK"]
    assert not set(heldout.splits["test"]) & set(config["corpus"]["train_sequences"])
    run = tmp_path / "ga"
    assert (
        main(
            [
                "sample",
                str(ASSETS / "checkpoint"),
                "--sequence",
                "ga",
                "--n",
                "2000",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["system"] == "GA" and summary["n_samples"] == 2000
    assert summary["system_spec"]["forcefield"] == ["amber99sbildn.xml", "amber99_obc.xml"]
    m = evaluate_run(run, heldout.dataset("GA"), EvaluateConfig(n_eval=1000, report=False))[
        "metrics"
    ]
    assert m["reweighted_resampled"]["e_w2"]["mean"] < m["proposal"]["e_w2"]["mean"]
