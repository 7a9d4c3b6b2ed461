"""End-to-end through the CLI on a tiny budget: md -> train -> sample -> evaluate -> report."""

import json

import numpy as np

from arbg.cli import main


def test_cli_pipeline(tmp_path):
    md, ref = tmp_path / "md", tmp_path / "ref"
    assert (
        main(
            [
                "md",
                "aldp",
                "--ns",
                "0.06",
                "--warmup-ps",
                "0.5",
                "--out",
                str(md),
                "--quiet",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "md",
                "aldp",
                "--ns",
                "0.06",
                "--warmup-ps",
                "0.5",
                "--out",
                str(ref),
                "--quiet",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    model = tmp_path / "model"
    assert (
        main(
            [
                "train",
                str(md),
                "--out",
                str(model),
                "--steps",
                "6",
                "--batch-size",
                "8",
                "--n-bins",
                "512",
                "--eval-every",
                "3",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    ckpts = [p for p in model.iterdir() if (p / "config.json").exists()]
    assert ckpts, "training wrote no checkpoint"
    run = tmp_path / "run"
    assert (
        main(
            [
                "sample",
                str(ckpts[0]),
                "--out",
                str(run),
                "--n",
                "40",
                "--seed",
                "3",
                "--batch-size",
                "20",
                "--quiet",
            ]
        )
        == 0
    )
    with np.load(run / "samples.npz") as z:
        assert z["coords"].shape == (40, 22, 3)
        assert np.isfinite(z["log_q"]).all()
    # extending the run with a new seed appends; reusing a seed is refused
    assert (
        main(["sample", str(ckpts[0]), "--out", str(run), "--n", "10", "--seed", "4", "--quiet"])
        == 0
    )
    assert (
        main(["sample", str(ckpts[0]), "--out", str(run), "--n", "10", "--seed", "4", "--quiet"])
        == 2
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_samples"] == 50
    assert (
        main(["evaluate", str(run), "--reference", str(ref), "--n-eval", "20", "--tica-lag", "2"])
        == 0
    )
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert "md_floor" in metrics["metrics"] and "proposal" in metrics["metrics"]
    html = (run / "report" / "report.html").read_text()
    assert "data:image/png;base64" in html
