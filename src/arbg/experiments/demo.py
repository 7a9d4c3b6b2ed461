"""`arbg demo`: the end-to-end job on alanine dipeptide (aldp).

Full demo (default budget about 30 minutes on 2 CPU cores): reference MD and training MD (two
independent runs, in parallel), training a ``tiny`` model, sampling with exact log-likelihoods,
SNIS reweighting, evaluation against the reference MD (E-W2, T-W2, TICA-W2, ESS, the MD-vs-MD
floor, MD at matched cost) and the HTML report.

By default both MD runs are biased along the backbone phi (a metadynamics-built bias, frozen for
production; :mod:`arbg.chem.bias`) and carry exact frame weights: plain MD of this length never
visits the alpha-L basin (phi > 0, ~2% of the equilibrium population), so neither the model nor
the reference would see it. The model is trained plain on the biased frames (a broad proposal;
SNIS corrects) and the reference is reweighted exactly; ``plain_md=True`` gives the unbiased
recipe.

``--quick`` (71 s to 2.6 minutes measured on 2 loaded CPU cores): samples from the pretrained
checkpoint shipped in ``arbg/assets/aldp/`` and evaluates against the shipped reference
trajectory; see ``arbg/assets/aldp/COMMANDS.md`` for the commands that made both.

Every stage is resumable: re-running the demo with the same output directory reuses what is done.

The demo checks its own result:

- :func:`training_verdict` compares the best validation NLL of a checkpoint with the marginal
  histogram baseline the trainer records (``training.baselines.marginal_nll``, nats/coord). A
  model whose NLL is not clearly below it (``min_gain`` nats/coord) has learnt nothing the
  per-coordinate marginals do not already give, and its samples are useless; the demo then stops
  with :class:`DemoNotTrained` instead of sampling from it.
- :func:`result_summary` reads ``metrics.json`` of the evaluation and returns the key figures and
  the flags of a result worse than the raw proposal or with an SNIS ESS below 1%
  (:func:`format_summary`: the lines the CLI prints).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arbg.chem.bias import BiasConfig
from arbg.chem.md import MDConfig, contiguous_splits, load_md_frames, load_md_log_weights, run_md
from arbg.chem.systems import build_system
from arbg.data.datasets import Dataset, load_dataset
from arbg.eval.cost import cost_floor, md_cost_curve
from arbg.eval.evaluate import EvaluateConfig, evaluate_run, load_run, worse_than_proposal
from arbg.eval.plots import plot_cost_curve
from arbg.files import atomic_write_json
from arbg.sampling.config import SampleConfig
from arbg.sampling.runs import run_sampling
from arbg.train.config import TrainConfig
from arbg.train.trainer import Trainer, train

log = logging.getLogger(__name__)

# the tiny model's best val NLL on aldp came at ~500 steps (DemoConfig notes): fewer steps in the
# budget get a warning before the MD starts
MIN_USEFUL_STEPS = 500

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "aldp"


@dataclass
class DemoConfig:
    """Settings of the demo (times in ns and minutes).

    Sized for 2 CPU cores: the two MD runs (12 + 1 ns and 8 + 1 ns with the bias build) take
    about 11 minutes in parallel; training stops early (``patience`` evaluations without a
    better val NLL) or after ``train_minutes``. The step schedule is sized by timing a few steps
    (kept in ``demo_state.json``; ``reset_schedule`` discards it and the model, and a re-run of an
    unfinished model re-probes and restarts when the machine is ``reprobe_speedup`` times
    faster). A model whose best val NLL is not ``min_nll_gain`` nats/coord below the marginal
    baseline stops the demo (:class:`DemoNotTrained`). With 5 ns
    of training data the tiny model overfit after ~4 epochs (best val NLL 5.14 nats/coord at
    step 500 of 3,320; SNIS ESS 8 of 10,000), so the budget goes to data rather than to steps.

    Attributes
    ----------
    quick : sample and evaluate the shipped checkpoint against the shipped reference (no MD, no
        training; 3,000 samples, 2,000 per W2)
    train_ns : ns of production MD for training
    reference_ns : ns of production MD for the reference
    train_minutes : training budget in minutes; a larger value on a re-run trains longer
    patience : early stopping after this many evaluations without a better val NLL
    train_steps : fixed number of training steps (default: sized by timing this machine)
    n_samples : proposals to sample (energy evaluations)
    n_eval : samples per W2 in the evaluation
    tau : sampling temperature of the model
    chirality : policy for samples of the wrong chirality (see arbg sample)
    seed : seed of the MD (+1, +2), training, sampling and evaluation
    progress : progress bars
    plain_md : unbiased MD for training and reference (default: phi-biased MD with exact frame
        weights, which covers the alpha-L basin)
    bias_build_ns : ns of metadynamics that build the phi bias before it is frozen
    data_weights : how the biased training frames' weights enter training
    reset_schedule : forget the recorded training speed and schedule (demo_state.json) and the
        model, re-time the machine and train from scratch
    min_nll_gain : nats/coord the best val NLL must lie below the marginal baseline
    reprobe_speedup : a re-run of a model that failed its check starts over with a new schedule
        when the machine is now this many times faster
    """

    quick: bool = False
    train_ns: float = 12.0
    reference_ns: float = 8.0
    train_minutes: float = 10.0
    patience: int = 3
    train_steps: int | None = None
    n_samples: int = 10_000
    n_eval: int = 5_000
    tau: float = 1.0
    chirality: str = field(default="mirror", metadata={"choices": ("mirror", "zero", "none")})
    seed: int = 0
    progress: bool = True
    plain_md: bool = False
    bias_build_ns: float = 1.0
    data_weights: str = field(default="plain", metadata={"choices": ("plain", "weighted")})
    reset_schedule: bool = False
    min_nll_gain: float = 0.1
    reprobe_speedup: float = 1.5


def shipped_assets() -> dict[str, Path]:
    """Paths of the shipped checkpoint and reference (raises if the package lacks them)."""
    paths = {
        "checkpoint": ASSETS / "checkpoint",
        "reference": ASSETS / "reference.npz",
        "topology": ASSETS / "reference.pdb",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"shipped demo assets missing: {', '.join(missing)}")
    return paths


def _md_job(args: tuple[str, float, int, float | None]) -> str:
    """One MD run of the demo: (out dir, production ns, seed, bias build ns or None)."""

    out, ns, seed, build_ns = args
    bias = None if build_ns is None else BiasConfig(build_ns=build_ns)
    run_md(build_system("aldp"), out, MDConfig(ns=ns, seed=seed, bias=bias), progress=False)
    return out


def _stage(name: str) -> float:
    log.info("demo: %s", name)
    return time.time()


def run_demo(out_dir: str | Path, config: DemoConfig | None = None) -> Path:
    """Run the demo into `out_dir`; returns the path of report.html."""

    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    system = build_system("aldp")
    extra_figures: list[tuple[Path, str]] = []
    cost: dict[str, Any] | None = None

    if cfg.quick:
        assets = shipped_assets()
        checkpoint = assets["checkpoint"]
        t = _stage("loading the shipped reference trajectory")
        reference = load_dataset(assets["reference"], topology=assets["topology"], system=system)
        timings["reference"] = time.time() - t
        n_samples = min(cfg.n_samples, 3000)
        n_eval = min(cfg.n_eval, 2000)
    else:
        checkpoint, reference = _md_and_train(out, cfg, system, timings)
        n_samples, n_eval = cfg.n_samples, cfg.n_eval

    t = _stage(f"sampling {n_samples} conformations with exact log q (tau={cfg.tau})")
    run_dir = out / "samples"
    if _fresh(run_dir / "samples.npz", Path(checkpoint) / "model.safetensors"):
        log.info("demo: reusing samples in %s", run_dir)
    else:
        # aldp has one chiral centre, so a wrong sample is wholly mirrored: the exact "mirror"
        # policy (density q(y) + q(-y)) uses it instead of discarding half the proposals
        sample = SampleConfig(n=n_samples, tau=cfg.tau, seed=cfg.seed, chirality=cfg.chirality)
        run_sampling(str(checkpoint), run_dir, sample, energy=system, progress=cfg.progress)
    timings["sample"] = time.time() - t

    if not cfg.quick:
        t = _stage("MD at matched cost")
        cost = _cost_stage(system, out, run_dir, reference, extra_figures)
        timings["cost_curve"] = time.time() - t

    t = _stage("evaluation and report")
    metrics = evaluate_run(
        run_dir,
        reference,
        EvaluateConfig(n_eval=n_eval, seed=cfg.seed),
        out_dir=out / "report",
        extra_figures=extra_figures,
        extra_metrics={"md_cost_curve": cost} if cost else None,
        title="arbg demo: alanine dipeptide (Ace-A-Nme, amber99sbildn/OBC, 300 K)",
    )
    timings["evaluate"] = time.time() - t
    metrics["demo_timings_s"] = timings
    atomic_write_json(out / "report" / "demo_timings.json", timings)
    summary = result_summary(metrics)
    atomic_write_json(out / "report" / "demo_summary.json", {**summary, "timings_s": timings})
    for flag in summary["flags"]:
        log.warning("demo: %s", flag)
    log.info("demo: summary in %s", out / "report" / "demo_summary.json")
    return out / "report" / "report.html"


def _md_and_train(
    out: Path, cfg: DemoConfig, system: Any, timings: dict[str, float]
) -> tuple[Path, Dataset]:
    """Plan the training (before the MD, so a too-small budget is reported early), run both MD
    runs in parallel, train and check the model; returns (checkpoint, reference dataset)."""
    t = _stage("timing training steps on this machine (shipped aldp frames)")
    assets = shipped_assets()
    probe = load_dataset(assets["reference"], topology=assets["topology"], system=system)
    tcfg = plan_training(out, _every(probe, 10), cfg)
    timings["plan"] = time.time() - t
    build = None if cfg.plain_md else cfg.bias_build_ns
    kind = "plain" if build is None else f"phi-biased (bias built in {build} ns, then frozen)"
    t = _stage(
        f"MD, {kind}: {cfg.train_ns} ns training data and {cfg.reference_ns} ns "
        "reference (two independent runs in parallel)"
    )
    jobs = [
        (str(out / "md" / "train"), cfg.train_ns, cfg.seed + 1, build),
        (str(out / "md" / "reference"), cfg.reference_ns, cfg.seed + 2, build),
    ]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_md_job, jobs))
    timings["md"] = time.time() - t
    t = _stage(f"training a tiny model for at most {cfg.train_minutes} minutes")
    checkpoint = train_stage(out, load_dataset(out / "md" / "train"), cfg, tcfg)
    timings["train"] = time.time() - t
    reference = load_dataset(out / "md" / "reference")
    return checkpoint, reference


def _cost_stage(
    system: Any, out: Path, run_dir: Path, reference: Dataset, figures: list[tuple[Path, str]]
) -> dict[str, Any] | None:
    """MD at matched cost and its plot (appended to `figures`); None without biased-MD data."""
    cost = _cost_curve(system, out, run_dir, reference)
    if cost is None:
        return None
    path = out / "report" / "cost_curve.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    md_metrics = {k: v for k, v in cost["md"].items() if k != "budgets"}
    plot_cost_curve(
        path,
        cost["budgets"],
        cost["bg"],
        md_metrics,
        md_budgets=cost["md"]["budgets"],
        floor=cost.get("floor"),
    )
    figures.append(
        (
            path,
            "E-W2 and T-W2 (log scales) against energy evaluations: the Boltzmann generator "
            "(SNIS) vs MD at matched cost; dotted: the MD-vs-MD floor",
        )
    )
    return cost


def plan_training(out: Path, probe_data: Dataset, cfg: DemoConfig) -> TrainConfig:
    """The demo's training settings, with the step schedule for ``cfg.train_minutes``.

    The speed is timed on `probe_data` (any aldp frames: the demo times before its MD, on the
    shipped reference) or read from ``out/demo_state.json`` (:func:`_schedule`); the choice is
    written there. Warns when fewer than :data:`MIN_USEFUL_STEPS` steps fit the budget.
    """
    tcfg = TrainConfig(
        preset="tiny",
        max_minutes=cfg.train_minutes,
        seed=cfg.seed,
        data_weights=cfg.data_weights,
        patience=cfg.patience,
    )
    state = _read_state(out)
    if cfg.reset_schedule:
        _discard_model(out / "model", "--reset-schedule")
        state = {}
    if cfg.train_steps:
        tcfg.steps, per_step = cfg.train_steps, state.get("seconds_per_step")
    else:
        per_step = _schedule(probe_data, tcfg, cfg, state, out / "model")
        tcfg.steps = steps_for_budget(per_step, cfg.train_minutes)
        fit = 0.85 * cfg.train_minutes * 60.0 / per_step
        if fit < MIN_USEFUL_STEPS:
            need = MIN_USEFUL_STEPS * per_step / 0.85 / 60.0
            log.warning(
                "demo: at %.2f s/step the %g-minute training budget fits only %d steps; the "
                "tiny model reached its best val NLL at ~%d steps on aldp, so the model will "
                "probably fail its check. --train-minutes %.0f fits %d steps here.",
                per_step,
                cfg.train_minutes,
                int(fit),
                MIN_USEFUL_STEPS,
                math.ceil(need),
                MIN_USEFUL_STEPS,
            )
    state.update(train_steps=tcfg.steps, train_minutes=cfg.train_minutes)
    if per_step is not None:
        state["seconds_per_step"] = per_step
    atomic_write_json(out / "demo_state.json", state)
    return tcfg


def train_stage(out: Path, data: Dataset, cfg: DemoConfig, tcfg: TrainConfig | None = None) -> Path:
    """Train (or resume) the demo's model into ``out/model`` and check it; returns the checkpoint.

    The step schedule fits ``cfg.train_minutes`` on this machine (`tcfg` from
    :func:`plan_training`; planned here on `data` if None) unless ``cfg.train_steps`` fixes it.
    After training, the best checkpoint must beat the marginal baseline by ``cfg.min_nll_gain``
    nats/coord (:func:`training_verdict`).

    Raises
    ------
    DemoNotTrained
        When it does not: the message says why and how to resume.
    """
    model_dir = out / "model"
    tcfg = tcfg or plan_training(out, data, cfg)
    state = _read_state(out)
    per_step = state.get("seconds_per_step")
    log.info(
        "demo: %d training steps (batch %d)%s",
        tcfg.steps,
        tcfg.batch_size,
        f", {per_step:.2f} s/step measured" if per_step else "",
    )
    final = train(data, model_dir, tcfg, progress=cfg.progress)
    checkpoint = model_dir / "best" if (model_dir / "best").exists() else final
    verdict = training_verdict(checkpoint, cfg.min_nll_gain)
    state.update(trained_ok=verdict["ok"], verdict=verdict)
    atomic_write_json(out / "demo_state.json", state)
    if not verdict["ok"]:
        raise DemoNotTrained(not_trained_message(verdict, out, cfg.train_minutes, per_step))
    log.info("demo: the model is trained: %s", verdict["reason"])
    return checkpoint


def _every(data: Dataset, k: int) -> Dataset:
    """Every k-th frame of `data` (with its weights), split into contiguous blocks."""
    x = data.positions[::k]
    return Dataset(x, data.system, contiguous_splits(len(x)), {}, data.log_weights[::k])


def _fresh(path: Path, source: Path) -> bool:
    """Whether `path` exists and is newer than `source` (samples of the current model)."""
    return path.exists() and (not source.exists() or path.stat().st_mtime >= source.stat().st_mtime)


def _read_state(out: Path) -> dict[str, Any]:
    path = out / "demo_state.json"
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); delete it or use --reset-schedule"
        ) from e


def _discard_model(model_dir: Path, why: str) -> None:
    if model_dir.exists():
        log.warning("demo: %s: discarding the model in %s (training restarts)", why, model_dir)
        shutil.rmtree(model_dir)


def _schedule(
    data: Dataset, tcfg: TrainConfig, cfg: DemoConfig, state: dict[str, Any], model_dir: Path
) -> float:
    """Seconds per training step on this machine, from ``demo_state.json`` or a probe.

    The first run probes and records the speed, so a resumed demo keeps its schedule. A re-run
    whose model did not pass its check probes again: when the machine is now more than
    ``cfg.reprobe_speedup`` times faster (a first run on a loaded machine), the old schedule and
    model are discarded and training restarts with the steps that fit the budget now.
    """
    old = state.get("seconds_per_step")
    if old is None:
        return probe_seconds_per_step(data, tcfg)
    if state.get("trained_ok"):
        return float(old)
    new = probe_seconds_per_step(data, tcfg)
    if new * cfg.reprobe_speedup < old:
        log.info(
            "demo: this machine is now %.1fx faster (%.2f s/step, was %.2f): new schedule",
            old / new,
            new,
            old,
        )
        _discard_model(model_dir, "faster machine")
        return new
    return float(old)


def steps_for_budget(seconds_per_step: float, minutes: float) -> int:
    """Steps that fit `minutes` at `seconds_per_step` (~15% left for validation passes and
    checkpoints), between 50 and 20,000."""
    return int(max(50, min(20_000, 0.85 * minutes * 60.0 / seconds_per_step)))


def probe_seconds_per_step(data: Dataset, tcfg: TrainConfig) -> float:
    """Seconds per training step of `tcfg` on `data`, timed over 4 steps after a warm-up."""
    probe = dataclasses.replace(tcfg, eval_every=10**9, checkpoint_every=10**9, max_minutes=None)
    log.info("demo: timing a few training steps to size the schedule")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(data, tmp, probe, progress=False)
        trainer.train_step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(4):
            trainer.train_step()
        return (time.perf_counter() - t0) / 4


def _cost_curve(system, out: Path, run_dir: Path, reference) -> dict[str, Any] | None:

    md_dir = out / "md" / "train"
    if not (md_dir / "progress.json").exists():
        return None
    run = load_run(run_dir)
    frames = load_md_frames(md_dir)
    meta = json.loads((md_dir / "metadata.json").read_text())
    steps_per_frame = int(round(meta["frame_interval_ps"] * 1000 / meta["step_fs"]))
    n = len(run["u"])
    budgets = sorted(
        {int(b) for b in np.geomspace(1000, max(n, len(frames) * steps_per_frame), 12)}
    )
    # biased MD at matched cost is reweighted with its exact frame weights
    md_lw = load_md_log_weights(md_dir) if meta.get("log_weights") else None
    curve = md_cost_curve(
        system,
        frames,
        steps_per_frame,
        run["coords"].astype(np.float64),
        run["u"],
        run["log_w_raw"],
        reference,
        budgets,
        md_log_weights=md_lw,
    )
    curve["floor"] = cost_floor(system, reference)
    return curve


# --------------------------------------------------------------------------------------------------
# the demo's checks of its own result

ESS_FLAG_FRACTION = 0.01
W2_KEYS = (("e_w2", "E-W2 (kT)"), ("t_w2", "T-W2 (rad)"), ("tica_w2", "TICA-W2"))


class DemoNotTrained(RuntimeError):
    """The demo's model is not trained well enough to sample from (the message says why and how
    to resume)."""


def training_verdict(checkpoint: str | Path, min_gain: float = 0.1) -> dict[str, Any]:
    """Whether the checkpoint's best val NLL is clearly below the marginal baseline.

    Parameters
    ----------
    checkpoint : a checkpoint directory written by :func:`arbg.train.trainer.train`.
    min_gain : nats/coord the val NLL must lie below the marginal baseline.

    Returns
    -------
    dict with ``ok`` (bool), ``best_val_nll``, ``marginal_nll``, ``uniform_nll`` (nats/coord),
    ``step``, ``steps`` (the schedule), ``early_stopped`` and ``reason`` (one sentence).
    """
    path = Path(checkpoint) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint config (was the model trained?)")
    training = json.loads(path.read_text()).get("training", {})
    baselines = training.get("baselines", {})
    best = float(training.get("best_val_nll", training.get("val_nll", math.inf)))
    marginal = float(baselines.get("marginal_nll", math.nan))
    out = {
        "best_val_nll": best,
        "marginal_nll": marginal,
        "uniform_nll": float(baselines.get("uniform_nll", math.nan)),
        "min_gain": float(min_gain),
        "step": int(training.get("step", 0)),
        "steps": int(training.get("train_config", {}).get("steps", 0)),
        "early_stopped": bool(training.get("early_stopped", False)),
    }
    if not math.isfinite(marginal):
        out["ok"] = False
        out["reason"] = f"{path} records no marginal baseline to compare with"
    elif best <= marginal - min_gain:
        out["ok"] = True
        out["reason"] = (
            f"best val NLL {best:.3f} nats/coord is {marginal - best:.3f} below the marginal "
            f"baseline {marginal:.3f}"
        )
    else:
        out["ok"] = False
        out["reason"] = (
            f"best val NLL {best:.3f} nats/coord is not clearly below the marginal baseline "
            f"{marginal:.3f} (needs <= {marginal - min_gain:.3f}) after {out['step']} of "
            f"{out['steps']} training steps"
        )
    return out


def not_trained_message(
    verdict: dict[str, Any], out: Path, train_minutes: float, seconds_per_step: float | None
) -> str:
    """What :class:`DemoNotTrained` says: why, and the commands that resume or restart."""
    speed = f" ({seconds_per_step:.2f} s/step on this machine)" if seconds_per_step else ""
    more = max(2 * train_minutes, 30.0)
    lines = [
        f"the model is not trained: {verdict['reason']}{speed}.",
        "Sampling from it would give a useless ensemble, so the demo stops here.",
        "To train longer (training resumes from the last checkpoint, the schedule is stretched):",
        f"  arbg demo --out {out} --train-minutes {more:g}",
        "To re-measure this machine's speed and train from scratch:",
        f"  arbg demo --out {out} --reset-schedule --train-minutes {more:g}",
        "Or use the shipped, trained checkpoint: arbg demo --quick",
    ]
    if verdict.get("early_stopped"):
        lines.insert(
            2,
            "Training stopped early (the val NLL stopped improving): more MD data "
            "(a larger DemoConfig.train_ns) helps more than more steps.",
        )
    return "\n".join(lines)


def _mean(metrics: dict[str, Any], ensemble: str, key: str) -> float:
    try:
        return float(metrics["metrics"][ensemble][key]["mean"])
    except (KeyError, TypeError, ValueError):
        return math.nan


def result_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Key figures of an evaluation and the flags of a useless result.

    Parameters
    ----------
    metrics : the dict of ``report/metrics.json`` (:func:`arbg.eval.evaluate.evaluate_run`).

    Returns
    -------
    dict with ``rows`` (metric label, proposal, reweighted, MD floor), ``ess``,
    ``ess_fraction``, ``n_proposals``, ``unique_resampled`` and ``flags`` (sentences; empty
    when nothing is wrong).
    """
    n = int(metrics.get("n_proposals", 0))
    ess = float(metrics.get("ess", math.nan))
    frac = float(metrics.get("ess_fraction", ess / n if n else math.nan))
    rw = "reweighted_resampled"
    rows = [
        (label, _mean(metrics, "proposal", k), _mean(metrics, rw, k), _mean(metrics, "md_floor", k))
        for k, label in W2_KEYS
    ]
    # the evaluation's own warnings (arbg.eval.evaluate: weight collapse, Pareto k, too few
    # distinct conformations, reweighted metrics worse than the proposal's)
    flags = list(metrics.get("warnings") or worse_than_proposal(metrics))
    if not frac >= ESS_FLAG_FRACTION and not any("collapsed" in f for f in flags):
        flags.append(
            f"SNIS ESS {ess:.1f} of {n} proposals ({100 * frac:.2f}%) is below "
            f"{100 * ESS_FLAG_FRACTION:g}%: the reweighted ensemble rests on a few samples"
        )
    unique = metrics.get("unique_resampled", {}).get("mean")
    return {
        "rows": rows,
        "ess": ess,
        "ess_fraction": frac,
        "n_proposals": n,
        "unique_resampled": unique,
        "flags": flags,
    }


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The summary as text lines (the CLI prints them)."""
    lines = [f"{'metric':<12s} {'proposal':>10s} {'reweighted':>11s} {'MD floor':>10s}"]
    for label, prop, rew, floor in summary["rows"]:
        lines.append(f"{label:<12s} {prop:10.4g} {rew:11.4g} {floor:10.4g}")
    unique = summary.get("unique_resampled")
    lines.append(
        f"SNIS ESS (clipped weights) {summary['ess']:.1f} of {summary['n_proposals']} "
        f"({100 * summary['ess_fraction']:.2f}%)"
        + (f"; {unique:.0f} distinct conformations resampled" if unique is not None else "")
    )
    if summary["flags"]:
        lines += [f"WARNING: {f}" for f in summary["flags"]]
    else:
        lines.append(
            "checks passed: reweighting improves on the proposal, ESS >= 1%, Pareto k <= 0.7, "
            ">= 10 distinct conformations"
        )
    return lines
