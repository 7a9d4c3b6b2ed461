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

``--quick`` (under 3 minutes): samples from the pretrained checkpoint shipped in
``arbg/assets/aldp/`` and evaluates against the shipped reference trajectory; see
``arbg/assets/aldp/COMMANDS.md`` for the commands that made both.

Every stage is resumable: re-running the demo with the same output directory reuses what is done.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arbg.chem.bias import BiasConfig
from arbg.chem.md import MDConfig, load_md_frames, load_md_log_weights, run_md
from arbg.chem.systems import build_system
from arbg.data.datasets import load_dataset
from arbg.eval.evaluate import evaluate_run, load_run, md_cost_curve
from arbg.eval.plots import plot_cost_curve
from arbg.sampling.runs import run_sampling
from arbg.train.trainer import TrainConfig, Trainer, train

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets" / "aldp"


@dataclass
class DemoConfig:
    """Settings of the demo (times in ns and minutes).

    Sized for 2 CPU cores: the two MD runs (12 + 1 ns and 8 + 1 ns with the bias build) take
    about 11 minutes in parallel; training stops early (``patience`` evaluations without a
    better val NLL) or after ``train_minutes``. With 5 ns of training data the tiny model
    overfit after ~4 epochs (best val NLL 5.14 nats/coord at step 500 of 3,320; SNIS ESS 8 of
    10,000), so the budget goes to data rather than to steps.
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
    chirality: str = "mirror"
    seed: int = 0
    progress: bool = True
    plain_md: bool = False
    bias_build_ns: float = 1.0
    data_weights: str = "plain"


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
        data = load_dataset(out / "md" / "train")
        tcfg = TrainConfig(
            preset="tiny",
            max_minutes=cfg.train_minutes,
            seed=cfg.seed,
            data_weights=cfg.data_weights,
            patience=cfg.patience,
        )
        tcfg.steps = cfg.train_steps or _steps_for_budget(data, tcfg, cfg.train_minutes, out)
        log.info("demo: %d training steps (batch %d)", tcfg.steps, tcfg.batch_size)
        model_dir = out / "model"
        final = train(data, model_dir, tcfg, progress=cfg.progress)
        checkpoint = model_dir / "best" if (model_dir / "best").exists() else final
        timings["train"] = time.time() - t
        reference = load_dataset(out / "md" / "reference")
        n_samples, n_eval = cfg.n_samples, cfg.n_eval

    t = _stage(f"sampling {n_samples} conformations with exact log q (tau={cfg.tau})")
    run_dir = out / "samples"
    if (run_dir / "samples.npz").exists():
        log.info("demo: reusing samples in %s", run_dir)
    else:
        # aldp has one chiral centre, so a wrong sample is wholly mirrored: the exact "mirror"
        # policy (density q(y) + q(-y)) uses it instead of discarding half the proposals
        run_sampling(
            str(checkpoint),
            run_dir,
            n=n_samples,
            tau=cfg.tau,
            seed=cfg.seed,
            energy=system,
            chirality=cfg.chirality,
            progress=cfg.progress,
        )
    timings["sample"] = time.time() - t

    if not cfg.quick:
        t = _stage("MD at matched cost")
        cost = _cost_curve(system, out, run_dir, reference)
        if cost is not None:
            path = out / "report" / "cost_curve.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            md_metrics = {k: v for k, v in cost["md"].items() if k != "budgets"}
            plot_cost_curve(
                path, cost["budgets"], cost["bg"], md_metrics, md_budgets=cost["md"]["budgets"]
            )
            extra_figures.append(
                (
                    path,
                    "E-W2 and T-W2 against energy evaluations: the "
                    "Boltzmann generator (SNIS) vs MD at matched cost",
                )
            )
        timings["cost_curve"] = time.time() - t

    t = _stage("evaluation and report")
    metrics = evaluate_run(
        run_dir,
        reference,
        out_dir=out / "report",
        n_eval=n_eval,
        seed=cfg.seed,
        extra_figures=extra_figures,
        extra_metrics={"md_cost_curve": cost} if cost else None,
        title="arbg demo: alanine dipeptide (Ace-A-Nme, amber99sbildn/OBC, 300 K)",
    )
    timings["evaluate"] = time.time() - t
    metrics["demo_timings_s"] = timings
    (out / "report" / "demo_timings.json").write_text(json.dumps(timings, indent=2))
    return out / "report" / "report.html"


def _steps_for_budget(data, tcfg, minutes: float, out: Path) -> int:
    """Steps that fit `minutes` on this machine, so the cosine schedule ends inside the budget.

    Timed once with a few training steps; the choice is kept in ``out/demo_state.json`` so a
    resumed demo keeps the same schedule.
    """
    import dataclasses
    import tempfile

    state_path = out / "demo_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if "train_steps" in state:
        return int(state["train_steps"])
    probe = dataclasses.replace(tcfg, eval_every=10**9, checkpoint_every=10**9, max_minutes=None)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(data, tmp, probe, progress=False)
        trainer.train_step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(4):
            trainer.train_step()
        per_step = (time.perf_counter() - t0) / 4
    # ~15% of the budget goes to validation passes and checkpoints
    steps = int(max(50, min(20_000, 0.85 * minutes * 60.0 / per_step)))
    state["train_steps"] = steps
    state["seconds_per_step"] = per_step
    state_path.write_text(json.dumps(state, indent=2))
    return steps


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
    return md_cost_curve(
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
