"""The shipped Ace-AAA-Nme checkpoint (issue 17) loads, proposes L-peptides with finite exact
log q, and runs twisted SMC through both interior residue boundaries on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import arbg
from arbg.cli import main
from arbg.train.checkpoints import read_config

torch.set_num_threads(1)

ASSETS = Path(arbg.__file__).parent / "assets" / "ace-aaa-nme"


def test_shipped_checkpoint_is_small_and_documented():
    size = sum(f.stat().st_size for f in (ASSETS / "checkpoint").iterdir())
    assert size <= 20 * 2**20
    commands = (ASSETS / "COMMANDS.md").read_text()
    assert "arbg md ace-aaa-nme" in commands and "arbg train" in commands
    assert read_config(ASSETS / "checkpoint")["system"]["spec"]["name"] == "ace-aaa-nme"


def test_shipped_checkpoint_runs_twisted_smc(tmp_path):
    run = tmp_path / "smc"
    args = ["smc", str(ASSETS / "checkpoint"), "--particles", "48", "--seed", "3"]
    assert main(args + ["--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["system"] == "ace-aaa-nme"
    assert len(summary["boundaries"]) == 2
    # every particle is evaluated at both boundaries unless killed there, then once at the end
    assert 48 < summary["energy_evaluations"] <= 3 * 48
    samples = np.load(run / "samples.npz")
    alive = np.isfinite(samples["log_w"])
    assert alive.any()
    assert np.isfinite(samples["log_q"][alive]).all()
    assert np.isfinite(samples["u"][alive]).all()
