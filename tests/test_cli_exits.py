"""The CLI's exits (issue 27): options named in one line, -v on either side of the subcommand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arbg.cli import build_parser, main

ASSET = Path(__file__).resolve().parents[1] / "src" / "arbg" / "assets" / "aldp" / "checkpoint"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
@pytest.mark.parametrize("command", ["sample", "smc", "train"])
def test_device_cuda_without_cuda_names_the_option(command, tmp_path, capsys):
    out = tmp_path / "out"
    first = str(ASSET) if command != "train" else str(tmp_path)
    assert main([command, first, "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device" in err[0] and "CPU-only" in err[0], err
    assert not out.exists()  # refused before anything was written


def test_verbose_on_either_side_of_the_subcommand():
    p = build_parser()
    assert p.parse_args(["-v", "system", "aldp"]).verbose is True
    assert p.parse_args(["system", "aldp", "-v"]).verbose is True
    assert p.parse_args(["system", "aldp"]).verbose is False


def test_unsigned_checkpoint_refused_until_signed_by_its_owner(tmp_path, capsys):
    """No checksums.json: refused (an edited std or temperature would load in silence), and the
    message names the explicit opt-in, `arbg sign-checkpoint`."""
    import shutil

    from arbg.train.checkpoints import CheckpointIntegrityError, load_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(ASSET, ck)
    (ck / "checksums.json").unlink()
    with pytest.raises(CheckpointIntegrityError, match="sign-checkpoint"):
        load_checkpoint(ck)
    assert main(["sample", str(ck), "--n", "2", "--out", str(tmp_path / "r")]) == 2
    assert "arbg sign-checkpoint" in capsys.readouterr().err
    assert main(["sign-checkpoint", str(ck)]) == 0
    assert load_checkpoint(ck).model is not None
    assert main(["sign-checkpoint", str(ck)]) == 2  # signed already
