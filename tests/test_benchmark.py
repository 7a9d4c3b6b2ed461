"""`arbg benchmark` and `arbg ablate` end to end on the real aldp system with tiny budgets."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from test_train import synthetic_dataset

from arbg.cli import main
from arbg.experiments.ablations import (
    AblateTemperatureConfig,
    ablate_bins,
    ablate_temperature,
    check_bins,
)
from arbg.experiments.benchmark import BenchmarkConfig, format_table, rank_marks, run_benchmark
from arbg.experiments.stages import BudgetConfig, ensure_trained, make_train_config, stats

TINY = dict(n_layer=1, n_embd=32, n_head=1, head_dim=32)


def budget(**kw) -> dict:
    base = dict(
        preset="tiny",
        steps=3,
        batch_size=8,
        n_bins=64,
        n_mixtures=2,
        model_overrides=dict(TINY),
        train_overrides=dict(eval_every=0, eval_frames=8, checkpoint_every=0),
        seeds=[0, 1],
        n_samples=40,
        n_eval=20,
        tica_lag=2,
        device="cpu",
    )
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_frames=120)


@pytest.fixture(scope="module")
def reference():
    return synthetic_dataset(n_frames=200, seed=5)


def _table_rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def _number(cell: str) -> float:
    return float(re.sub(r"[*<>/u]", "", cell).split("±")[0])


def _mtimes(out: Path) -> dict[str, float]:
    files = [
        *out.glob("train/*/last/model.safetensors"),
        *out.glob("runs/*/samples.npz"),
        *out.glob("runs/*/report/metrics.json"),
        *out.glob("tune/*.json"),
    ]
    return {str(f): f.stat().st_mtime_ns for f in files}


def test_benchmark_table_and_resume(tmp_path, data, reference):
    cfg = BenchmarkConfig(
        **budget(),
        heads=["bins", "mol", "gmm", "givt"],
        taus=[0.9, 1.1],
        tune_heads=["bins", "gmm"],
        tune_n=20,
        tune_n_eval=10,
    )
    res = run_benchmark(data, reference, tmp_path, cfg, command="arbg benchmark test")
    md = (tmp_path / "table.md").read_text()
    page = (tmp_path / "table.html").read_text()
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["command"] == "arbg benchmark test" and "arbg benchmark test" in md
    methods = [
        "ARBG (τ = 1)",
        "MoL-PixelCNN++ (τ = 1)",
        "GMM-PixelCNN++ (τ = 1)",
        "GIVT (τ = 1)",
        "ARBG (tuned τ)",
        "GMM-PixelCNN++ (tuned τ)",
        "MD (40 energy evaluations)",
    ]
    assert [r["method"] for r in saved["rows"]] == methods
    assert "| Method | E-W2 ↓ (kT) | T-W2 ↓ (rad) |" in md
    rows = _table_rows(md)
    assert [r[0] for r in rows] == methods and all(len(r) == 3 for r in rows)
    assert page.count("<tr>") == len(methods) + 1 and "<b>" in page
    for col, key in ((1, "e_w2"), (2, "t_w2")):
        means = [r[key]["mean"] for r in saved["rows"]]
        assert all(math.isfinite(m) for m in means)
        best = [i for i, m in enumerate(means) if m == min(means)]
        bold = [i for i, r in enumerate(rows) if r[col].startswith("**")]
        assert bold == best
        assert min(_number(rows[i][col]) for i in range(len(rows))) == pytest.approx(
            _number(rows[best[0]][col])
        )
        assert all("±" in r[col] for r in rows)  # two seeds: mean ± std
    # every model: 3 steps, 40 proposals = energy evaluations, its seed, tuned tau from the grid
    for head, recs in saved["models"].items():
        for seed, rec in recs.items():
            ck = json.loads((Path(rec["checkpoint"]) / "config.json").read_text())
            assert ck["model"]["head"] == head and ck["training"]["step"] == 3
            assert ck["training"]["train_config"]["seed"] == int(seed)
            assert rec["tau1"]["energy_evaluations"] == 40
            if head in ("bins", "gmm"):
                # the chosen tau is the one of the lowest E-W2 + T-W2 on the tuning sweep
                tune_rows = rec["tune"]["rows"]
                assert [r["tau"] for r in tune_rows] == [0.9, 1.1]
                best = min(tune_rows, key=lambda r: r["e_w2"] + r["t_w2"])
                assert rec["tune"]["best_tau"] == best["tau"]
                assert rec["tuned"]["tau"] == rec["tune"]["best_tau"]
            else:
                assert "tune" not in rec
    assert saved["md"]["n_frames"] == 40 and saved["md"]["blocks"] == [[0, 40], [40, 80]]
    assert len(res["ran"]) == 8 * 3 + 4 * 3  # train/sample/evaluate + tune/sample/evaluate

    # resume: nothing is redone, no file is rewritten
    before = _mtimes(tmp_path)
    assert len(before) == 8 + 12 + 12 + 4
    again = run_benchmark(data, reference, tmp_path, cfg)
    assert again["ran"] == [] and _mtimes(tmp_path) == before
    assert again["rows"] == res["rows"]
    # a lost evaluation is redone, nothing else
    (tmp_path / "runs" / "mol-seed1-tau1" / "report" / "metrics.json").unlink()
    third = run_benchmark(data, reference, tmp_path, cfg)
    assert third["ran"] == ["mol-seed1-tau1"]


def test_benchmark_cli(tmp_path, data, reference, capsys):
    pdb = tmp_path / "aldp.pdb"
    data.system.save_pdb(pdb)
    np.save(tmp_path / "data.npy", data.positions)
    np.save(tmp_path / "ref.npy", reference.positions)
    out = tmp_path / "bench"
    common = [
        "--topology",
        str(pdb),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--seeds",
        "3",
        "--n-samples",
        "30",
        "--n-eval",
        "15",
        "--tica-lag",
        "2",
        "--device",
        "cpu",
    ]
    argv = [
        "benchmark",
        str(tmp_path / "data.npy"),
        "--reference",
        str(tmp_path / "ref.npy"),
        "--out",
        str(out),
        "--heads",
        "bins",
        "--n-bins",
        "64",
        "--tune-heads",
        *common,
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| ARBG (τ = 1) |" in printed and f"table_md: {out / 'table.md'}" in printed
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["command"].startswith("arbg benchmark ") and "--tune-heads" in saved["command"]
    assert [r["method"] for r in saved["rows"]] == ["ARBG (τ = 1)", "MD (30 energy evaluations)"]
    # the bin ablation through the CLI
    argv = [
        "ablate",
        "bins",
        str(tmp_path / "data.npy"),
        "--bins",
        "32",
        "--out",
        str(tmp_path / "abl"),
        "--bound-frames",
        "20",
        "--reference",
        str(tmp_path / "ref.npy"),
        *common,
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"png: {tmp_path / 'abl' / 'ablate_bins.png'}" in printed
    assert json.loads((tmp_path / "abl" / "ablate_bins.json").read_text())["bins"] == [32]
    # bad input: a clear message and exit status 2, before any work
    assert (
        main(
            [
                "benchmark",
                "nowhere.npy",
                "--reference",
                "x",
                "--out",
                str(tmp_path / "no"),
                "--heads",
                "bins",
                "pixelcnn",
            ]
        )
        == 2
    )
    assert "unknown head(s) ['pixelcnn']" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_ablate_bins(tmp_path, data, reference):
    cfg = BudgetConfig(**budget(seeds=[0]))
    res = ablate_bins(data, tmp_path, [64, 32], cfg, reference=reference, bound_frames=50)
    assert [r["n_bins"] for r in res["rows"]] == [32, 64]
    coarse, fine = res["rows"]
    assert coarse["bound_e_w2"] > fine["bound_e_w2"] > 0
    assert coarse["bin_width_pm"] == pytest.approx(2 * fine["bin_width_pm"])
    for r in res["rows"]:
        assert math.isfinite(r["e_w2"]["mean"]) and math.isfinite(r["t_w2"]["mean"])
    lines = (tmp_path / "ablate_bins.csv").read_text().splitlines()
    assert lines[0].startswith("n_bins,e_w2_mean,e_w2_std,t_w2_mean") and len(lines) == 3
    assert (tmp_path / "ablate_bins.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "ablate_bins.json").read_text())
    assert saved["bins"] == [32, 64] and len(saved["rows"][0]["runs"]) == 1
    ck = json.loads((tmp_path / "train" / "bins32-seed0" / "last" / "config.json").read_text())
    assert ck["binning"]["n_bins"] == 32
    # resume: no training, sampling or evaluation again
    again = ablate_bins(data, tmp_path, [32, 64], cfg, reference=reference, bound_frames=50)
    assert [s["key"] for s in again["stages"] if s["ran"] and s["stage"] != "bound"] == []
    # the test block of the data is the default reference
    res2 = ablate_bins(
        synthetic_dataset(n_frames=300),
        tmp_path / "heldout",
        [32],
        BudgetConfig(**budget(seeds=[0])),
    )
    assert res2["reference"].endswith("[test]:30")


def test_ablate_temperature(tmp_path, data, reference, capsys):
    ckpt = ensure_trained(
        data, tmp_path / "model", make_train_config(BudgetConfig(**budget()), "bins", 0)
    )
    taus = [0.9, 1.0, 1.2]
    abl_cfg = AblateTemperatureConfig(
        tuple(taus), n_samples=20, n_eval=10, seeds=(0, 1), device="cpu"
    )
    res = ablate_temperature(ckpt, reference, tmp_path / "abl", abl_cfg)
    assert [r["tau"] for r in res["rows"]] == taus
    # best: the lowest mean E-W2 + T-W2 over the seeds, and each score is that sum
    for r in res["rows"]:
        assert r["score"]["mean"] == pytest.approx(r["e_w2"]["mean"] + r["t_w2"]["mean"])
    assert res["best_tau"] == min(res["rows"], key=lambda r: r["score"]["mean"])["tau"]
    for r in res["rows"]:
        assert r["e_w2"]["n"] == 2 and math.isfinite(r["t_w2"]["mean"])
        assert 0 < r["relative_ess"]["mean"] <= 1
    for name in ("json", "csv", "png"):
        assert Path(res["paths"][name]).exists()
    assert len((tmp_path / "abl" / "ablate_temperature.csv").read_text().splitlines()) == 4
    again = ablate_temperature(ckpt, reference, tmp_path / "abl", abl_cfg)
    assert again["ran"] == [] and again["rows"] == res["rows"]
    # through the CLI, with the reference from disk
    pdb, ref = tmp_path / "ref.pdb", tmp_path / "ref.npy"
    reference.system.save_pdb(pdb)
    np.save(ref, reference.positions)
    assert (
        main(
            [
                "ablate",
                "temperature",
                str(ckpt),
                "--taus",
                "0.95",
                "1.05",
                "--reference",
                str(ref),
                "--topology",
                str(pdb),
                "--out",
                str(tmp_path / "cli"),
                "--n-samples",
                "20",
                "--n-eval",
                "10",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "best tau: " in capsys.readouterr().out
    saved = json.loads((tmp_path / "cli" / "ablate_temperature.json").read_text())
    assert [r["tau"] for r in saved["rows"]] == [0.95, 1.05]
    assert saved["command"].startswith("arbg ablate temperature ")


def test_bad_input(tmp_path, data, reference):
    with pytest.raises(ValueError, match="unknown head"):
        run_benchmark(data, reference, tmp_path / "b", BenchmarkConfig(heads=["bins", "pixel"]))
    with pytest.raises(ValueError, match="at least one head"):
        BenchmarkConfig(heads=[]).validate()
    with pytest.raises(ValueError, match="not among heads"):
        BenchmarkConfig(heads=["bins"], tune_heads=["gmm"]).validate()
    with pytest.raises(ValueError, match="taus"):
        BenchmarkConfig(taus=[]).validate()
    with pytest.raises(ValueError, match="at least one bin count"):
        ablate_bins(data, tmp_path / "a", [], BudgetConfig(**budget()), reference=reference)
    with pytest.raises(ValueError, match="distinct"):
        check_bins([64, 64])
    with pytest.raises(ValueError, match=">= 2"):
        check_bins([1, 64])
    with pytest.raises(ValueError, match="seed"):
        BudgetConfig(seeds=[]).validate()
    with pytest.raises(ValueError, match="taus"):
        ablate_temperature(tmp_path, reference, tmp_path / "t", AblateTemperatureConfig(taus=()))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_format_table_marks():
    rows = [
        {"method": "a", "e_w2": stats([1.0, 1.2]), "t_w2": stats([0.5])},
        {"method": "b", "e_w2": stats([0.4, 0.6]), "t_w2": stats([0.5])},
        {"method": "c", "e_w2": stats([2.0]), "t_w2": stats([0.7])},
        {"method": "d", "e_w2": stats([float("nan")]), "t_w2": stats([0.1, 0.3])},
    ]
    assert rank_marks(rows, "e_w2") == ["second", "best", "", ""]
    assert rank_marks(rows, "t_w2") == ["second", "second", "", "best"]
    md, page = format_table(rows, "t", notes=["note one"])
    cells = _table_rows(md)
    assert cells[1][1] == "**0.500 ± 0.141**" and cells[0][1] == "<u>1.100 ± 0.141</u>"
    assert cells[3][1] == "—" and cells[3][2] == "**0.200 ± 0.141**"
    assert cells[2][1] == "2.000"  # one value: no ±
    assert "<b>0.500 ± 0.141</b>" in page and "<li>note one</li>" in page
