"""The demo checks its own result: an untrained model stops it; useless results are flagged."""

import json

import numpy as np
import pytest

from arbg.chem.md import contiguous_splits
from arbg.data.datasets import Dataset, load_dataset
from arbg.experiments.demo import (
    DemoConfig,
    DemoNotTrained,
    format_summary,
    result_summary,
    shipped_assets,
    steps_for_budget,
    train_stage,
    training_verdict,
)


@pytest.fixture(scope="module")
def small_data(aldp):
    """2,000 frames of the shipped (phi-biased, weighted) aldp reference, every 20th frame."""
    assets = shipped_assets()
    ref = load_dataset(assets["reference"], topology=assets["topology"], system=aldp)
    x = ref.positions[::20][:2000]
    return Dataset(x, aldp, contiguous_splits(len(x)), {}, ref.log_weights[::20][:2000])


def test_demo_refuses_an_untrained_model(small_data, tmp_path):
    """Acceptance: the training stage under a tiny step budget does not report success."""
    cfg = DemoConfig(train_steps=3, progress=False, patience=None, seed=0)
    with pytest.raises(DemoNotTrained) as err:
        train_stage(tmp_path, small_data, cfg)
    msg = str(err.value)
    assert "not clearly below the marginal baseline" in msg
    assert "after 3 of 3 training steps" in msg
    assert f"arbg demo --out {tmp_path} --train-minutes" in msg  # how to resume
    assert "--reset-schedule" in msg
    state = json.loads((tmp_path / "demo_state.json").read_text())
    assert state["trained_ok"] is False and state["train_steps"] == 3
    v = state["verdict"]
    assert v["best_val_nll"] > v["marginal_nll"] - 0.1
    assert not (tmp_path / "samples").exists()


def test_reset_schedule_discards_the_model_and_schedule(small_data, tmp_path):
    (tmp_path / "model" / "last").mkdir(parents=True)
    (tmp_path / "demo_state.json").write_text(json.dumps({"train_steps": 50}))
    cfg = DemoConfig(train_steps=2, progress=False, patience=None, reset_schedule=True)
    with pytest.raises(DemoNotTrained):
        train_stage(tmp_path, small_data, cfg)
    state = json.loads((tmp_path / "demo_state.json").read_text())
    assert state["train_steps"] == 2
    assert (
        json.loads((tmp_path / "model" / "last" / "config.json").read_text())["training"]["step"]
        == 2
    )


def _checkpoint(tmp_path, best, marginal=6.4, step=500, steps=500):
    d = tmp_path / "ck"
    d.mkdir(exist_ok=True)
    training = {
        "step": step,
        "best_val_nll": best,
        "baselines": {"marginal_nll": marginal, "uniform_nll": 8.3},
        "early_stopped": False,
        "train_config": {"steps": steps},
    }
    (d / "config.json").write_text(json.dumps({"training": training}))
    return d


def test_training_verdict_threshold(tmp_path):
    assert training_verdict(_checkpoint(tmp_path, 5.0), min_gain=0.1)["ok"]
    assert not training_verdict(_checkpoint(tmp_path, 6.35), min_gain=0.1)["ok"]
    bad = training_verdict(_checkpoint(tmp_path, 7.26, step=34, steps=50))
    assert not bad["ok"] and "after 34 of 50" in bad["reason"]
    with pytest.raises(FileNotFoundError, match="config.json"):
        training_verdict(tmp_path / "missing")


def test_steps_for_budget():
    assert steps_for_budget(0.1, 10.0) == 5100
    assert steps_for_budget(26.0, 10.0) == 50  # the floor
    assert steps_for_budget(1e-6, 10.0) == 20_000


def _metrics(prop, rew, ess, n=10_000):
    def m(v):
        return {k: {"mean": v} for k in ("e_w2", "t_w2", "tica_w2")}

    return {
        "n_proposals": n,
        "ess": ess,
        "ess_fraction": ess / n,
        "unique_resampled": {"mean": 1.0},
        "metrics": {"proposal": m(prop), "reweighted_resampled": m(rew), "md_floor": m(0.1)},
    }


def test_summary_flags_useless_results():
    good = result_summary(_metrics(1.5, 0.4, 300.0))
    assert good["flags"] == []
    assert "checks passed" in format_summary(good)[-1]
    # the run: ESS 1 of 10,000, reweighted T-W2 2.52 against 1.47 for the proposal
    bad = result_summary(_metrics(1.47, 2.52, 1.0))
    assert len(bad["flags"]) == 4  # three W2 worse than the proposal, ESS below 1%
    lines = format_summary(bad)
    assert any("T-W2" in x and "worse than the raw proposal" in x for x in lines)
    assert any(x.startswith("WARNING: SNIS ESS 1.0 of 10000") for x in lines)
    nan = result_summary(_metrics(1.0, float("nan"), float("nan")))
    assert len(nan["flags"]) == 4  # NaN metrics are never a pass
    assert np.isnan(nan["ess"])


@pytest.mark.slow
def test_full_demo_stops_before_sampling_an_untrained_model(tmp_path):
    """The whole demo (short MD, 3 training steps) stops at the check: no samples, no report."""
    from arbg.experiments.demo import run_demo

    cfg = DemoConfig(
        train_ns=0.03,
        reference_ns=0.03,
        bias_build_ns=0.01,
        train_steps=3,
        patience=None,
        progress=False,
    )
    with pytest.raises(DemoNotTrained, match="marginal baseline"):
        run_demo(tmp_path, cfg)
    assert (tmp_path / "md" / "train" / "progress.json").exists()
    assert not (tmp_path / "samples").exists() and not (tmp_path / "report").exists()


def test_cli_demo_exit_status_and_message(monkeypatch, tmp_path, capsys):
    import arbg.cli as cli
    import arbg.cli._experiments as experiments_cli

    def not_trained(out, cfg):
        assert cfg.reset_schedule and cfg.train_minutes == 30
        raise DemoNotTrained("the model is not trained: because")

    monkeypatch.setattr(experiments_cli, "run_demo", not_trained)
    argv = ["demo", "--out", str(tmp_path), "--reset-schedule", "--train-minutes", "30"]
    assert cli.main(argv) == 3
    assert "arbg demo: the model is not trained: because" in capsys.readouterr().err


def test_plan_warns_when_the_budget_fits_too_few_steps(small_data, tmp_path, caplog):
    from arbg.experiments.demo import plan_training

    cfg = DemoConfig(train_minutes=0.02, progress=False)
    with caplog.at_level("WARNING", logger="arbg.experiments.demo"):
        tcfg = plan_training(tmp_path, small_data, cfg)
    assert tcfg.steps == 50  # the floor of the schedule
    assert "fits only" in caplog.text and "--train-minutes" in caplog.text
    state = json.loads((tmp_path / "demo_state.json").read_text())
    assert state["seconds_per_step"] > 0 and state["train_minutes"] == 0.02
