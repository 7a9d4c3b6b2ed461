"""Resumable stages shared by `arbg benchmark` and `arbg ablate`: train, sample + evaluate, tune.

Each stage reuses its output when it is complete and was made with the same settings:

- :func:`ensure_trained`: :func:`arbg.train.trainer.train` into a directory (a run that reached its
  steps is reused; an incomplete one resumes from ``last``).
- :func:`ensure_run`: :func:`arbg.sampling.runs.run_sampling` (``n_samples`` proposals = energy
  evaluations at one tau, SNIS) and :func:`arbg.eval.evaluate.evaluate_run`
  (``report/metrics.json``).
- :func:`ensure_tuned`: :func:`arbg.experiments.tuning.tune_temperature`, cached as JSON.

MD with the same number of energy evaluations is :mod:`arbg.experiments.md_baseline`.

:class:`BudgetConfig` is the budget every trained model gets; :class:`StageLog` records what each
stage did (ran or reused, seconds).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from arbg.data.datasets import Dataset, load_dataset
from arbg.eval.evaluate import EvaluateConfig, evaluate_run
from arbg.experiments.tuning import TuneConfig, tune_temperature
from arbg.files import atomic_write_json
from arbg.sampling.config import SampleConfig
from arbg.sampling.runs import run_sampling
from arbg.train.checkpoints import load_checkpoint, read_config
from arbg.train.config import TrainConfig
from arbg.train.trainer import train

logger = logging.getLogger(__name__)

RESAMPLED = "reweighted_resampled"


@dataclass
class BudgetConfig:
    """The budget every trained model gets (shared by the benchmark and the bin ablation).

    Attributes
    ----------
    preset : model size preset of :class:`arbg.nn.model.ModelConfig`.
    steps : optimizer steps of every training run.
    batch_size : global batch (frames per step) of every training run.
    n_bins : bins ``L`` (None: :func:`arbg.nn.coordinates.default_n_bins`).
    n_mixtures : mixture components of the ``mol``/``gmm``/``givt`` heads.
    model_overrides : extra :class:`arbg.nn.model.ModelConfig` fields (e.g. ``n_layer``).
    train_overrides : extra :class:`arbg.train.trainer.TrainConfig` fields (e.g. ``eval_every``).
    seeds : one training seed per repeat; the same seed samples and evaluates.
    n_samples : proposals per sampling run (= energy evaluations).
    n_eval : samples per W2 (capped at half the reference frames by the MD floor).
    tica_lag : TICA lag in reference frames.
    chirality : chirality policy of every sampling run (as in
        :class:`arbg.sampling.config.SampleConfig`).
    clip_fraction : fraction of log-weights clipped in every sampling run
        (:func:`arbg.reweight.snis`).
    device : ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    report : also write the HTML report of every run (slower).
    """

    preset: str = field(default="tiny", metadata={"choices": ("tiny", "small", "medium", "large")})
    steps: int = 1600
    batch_size: int = 32
    n_bins: int | None = None
    n_mixtures: int = 10
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    n_samples: int = 10_000
    n_eval: int = 5_000
    tica_lag: int = 100
    chirality: str = field(default="zero", metadata={"choices": ("zero", "mirror")})
    clip_fraction: float = 0.002
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    report: bool = False

    def validate(self) -> None:
        """Raise ValueError for budgets that cannot run."""
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}"
            )
        if self.n_samples < 2 or self.n_eval < 2:
            raise ValueError(
                f"n_samples and n_eval must be >= 2, got {self.n_samples}, {self.n_eval}"
            )
        if self.n_bins is not None and self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")

    def sample_config(self, tau: float, seed: int) -> SampleConfig:
        """The :class:`arbg.sampling.config.SampleConfig` of a run of this budget."""
        return SampleConfig(
            n=self.n_samples,
            tau=tau,
            seed=seed,
            device=resolve_device(self.device),
            clip_fraction=self.clip_fraction,
            chirality=self.chirality,
        )

    def evaluate_config(self, seed: int) -> EvaluateConfig:
        """The :class:`arbg.eval.evaluate.EvaluateConfig` of a run of this budget."""
        return EvaluateConfig(
            n_eval=self.n_eval, seed=seed, tica_lag=self.tica_lag, report=self.report
        )


# --------------------------------------------------------------------------------------------------
# stage log and small helpers


class StageLog:
    """What each stage did: ``records`` of ``{stage, key, ran, wall_s}`` (ran False: reused)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, stage: str, key: str, ran: bool, wall_s: float) -> None:
        self.records.append({"stage": stage, "key": key, "ran": ran, "wall_s": wall_s})

    def ran(self, stage: str | None = None) -> list[str]:
        """Keys of the stages that did work (not reused), optionally of one stage kind."""
        return [r["key"] for r in self.records if r["ran"] and stage in (None, r["stage"])]

    def wall_s(self) -> dict[str, float]:
        """Seconds spent per stage kind."""
        out: dict[str, float] = {}
        for r in self.records:
            out[r["stage"]] = out.get(r["stage"], 0.0) + r["wall_s"]
        return out


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, std (ddof=1; 0 for one value) and the values; non-finite values are left out."""
    vals = [float(v) for v in values]
    ok = [v for v in vals if math.isfinite(v)]
    mean = float(np.mean(ok)) if ok else float("nan")
    std = float(np.std(ok, ddof=1)) if len(ok) > 1 else (0.0 if ok else float("nan"))
    return {"mean": mean, "std": std, "n": len(ok), "values": vals}


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else -math.inf


def tau_name(tau: float) -> str:
    """Directory-name form of a tau (``1.0`` -> ``tau1``, ``1.03`` -> ``tau1.03``)."""
    return f"tau{float(tau):g}"


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def as_dataset(
    source: str | Path | Dataset, topology: str | Path | None = None, system: Any = None
) -> Dataset:
    """A Dataset as it is, or :func:`arbg.data.datasets.load_dataset` of a path."""
    if isinstance(source, Dataset):
        return source

    ds = load_dataset(source, topology=topology, system=system)
    ds.metadata.setdefault("source", str(source))
    return ds


def dataset_id(ds: Dataset) -> str:
    """A short identity of a dataset for the resume checks (source and frame count)."""
    return f"{ds.metadata.get('source', ds.system.name)}:{len(ds)}"


def held_out_reference(data: Dataset) -> Dataset:
    """The ``test`` block of ``data`` as a reference (used when no independent one is given)."""
    lo, hi = data.splits.get("test", [len(data), len(data)])
    if hi - lo < 4:
        raise ValueError("no reference given and the data has no test block to evaluate on")
    logger.warning(
        "no reference MD given: evaluating against the test block of the training "
        "data (%d frames; correlated with the training frames)",
        hi - lo,
    )
    return Dataset(
        data.positions[lo:hi],
        data.system,
        {"test": [0, hi - lo]},
        {"source": f"{data.metadata.get('source', data.system.name)}[test]"},
        data.log_weights[lo:hi],
    )


# --------------------------------------------------------------------------------------------------
# stages


def make_train_config(
    budget: BudgetConfig, head: str, seed: int, n_bins: int | None = None
) -> TrainConfig:
    """The :class:`arbg.train.trainer.TrainConfig` of one training run of the budget.

    Parameters
    ----------
    budget : the shared budget.
    head : output head (``model_overrides["head"]``).
    seed : training seed.
    n_bins : bins, overriding ``budget.n_bins`` (bin ablation).
    """

    overrides = {**budget.model_overrides, "head": head}
    if head != "bins":
        overrides.setdefault("head_kwargs", {"n_mixtures": budget.n_mixtures})
    cfg = TrainConfig(
        preset=budget.preset,
        model_overrides=overrides,
        n_bins=n_bins if n_bins is not None else budget.n_bins,
        steps=budget.steps,
        batch_size=budget.batch_size,
        seed=seed,
        device=budget.device,
    )
    for key, value in budget.train_overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"unknown TrainConfig field {key!r} in train_overrides")
        setattr(cfg, key, value)
    return cfg


def ensure_trained(
    data: Dataset, out_dir: str | Path, config: TrainConfig, log: StageLog | None = None
) -> Path:
    """Train into ``out_dir`` unless a complete run is there; returns the checkpoint to sample.

    A run is complete when ``out_dir/last`` reached ``config.steps``; an incomplete one is
    resumed by :func:`arbg.train.trainer.train` from ``last``. A directory trained with another
    head or bin count is refused.

    Returns
    -------
    Path: ``out_dir/best`` (lowest val NLL; ``last`` when there is no ``best``), resolved.
    """

    out = Path(out_dir)
    t0 = time.time()
    ran = True
    if (out / "last" / "config.json").exists():
        stored = read_config(out / "last")
        head = config.model_overrides.get("head", "bins")
        if stored["model"].get("head", "bins") != head or (
            config.n_bins is not None and stored["binning"]["n_bins"] != config.n_bins
        ):
            raise ValueError(
                f"{out} holds a model with head {stored['model'].get('head')!r} "
                f"and {stored['binning']['n_bins']} bins, not {head!r} with "
                f"{config.n_bins}: use another output directory"
            )
        if int(stored.get("training", {}).get("step", 0)) >= config.steps:
            ran = False
            logger.info("reusing the trained model in %s (%d steps)", out, config.steps)
    if ran:
        logger.info(
            "training %s (head %s, seed %d, %d steps, batch %d)",
            out,
            config.model_overrides.get("head", "bins"),
            config.seed,
            config.steps,
            config.batch_size,
        )
        train(data, out, config, progress=False)
    if log is not None:
        log.add("train", out.name, ran, time.time() - t0)
    best = out / "best"
    return (best if (best / "config.json").exists() else out / "last").resolve()


def ensure_run(
    checkpoint: str | Path,
    run_dir: str | Path,
    reference: Dataset,
    budget: BudgetConfig,
    tau: float,
    seed: int,
    log: StageLog | None = None,
    sequence: str | None = None,
) -> dict[str, Any]:
    """Sample ``budget.n_samples`` proposals at ``tau`` and evaluate them, reusing what is done.

    ``sequence`` binds a transferable checkpoint to that sequence (zero-shot, the checkpoint's
    force field); single-system checkpoints take None.

    The run (:func:`arbg.sampling.runs.run_sampling`) is reused when it has the same checkpoint,
    tau and sample count and is newer than the checkpoint's weights; else it is redone.
    ``run_dir/report/metrics.json`` (:func:`arbg.eval.evaluate.evaluate_run`) is reused when it is
    newer than the samples and was made with the same ``n_eval``, seed, TICA lag and reference.

    Returns
    -------
    dict: the content of metrics.json (``metrics[ensemble][e_w2|t_w2|tica_w2]``, ESS, ...).
    """

    run = Path(run_dir)
    _ensure_samples(Path(checkpoint).resolve(), run, budget, tau, seed, log, sequence)
    return _ensure_metrics(run, reference, budget, seed, log)


def _ensure_samples(
    ckpt: Path,
    run: Path,
    budget: BudgetConfig,
    tau: float,
    seed: int,
    log: StageLog | None,
    sequence: str | None,
) -> None:
    """The sampling stage of :func:`ensure_run`: redo a run made otherwise or interrupted."""
    samples, summary_path = run / "samples.npz", run / "summary.json"
    t0 = time.time()
    if samples.exists() and summary_path.exists():
        s = json.loads(summary_path.read_text())
        problems = [
            name
            for name, bad in (
                ("sample count", s.get("n_samples") != budget.n_samples),
                ("tau", not math.isclose(float(s.get("tau", math.nan)), float(tau))),
                ("checkpoint", s.get("checkpoint") != str(ckpt)),
                ("stale (checkpoint newer)", _mtime(ckpt / "model.safetensors") > _mtime(samples)),
            )
            if bad
        ]
        if problems:
            logger.warning("%s: redoing the run (%s differ)", run, ", ".join(problems))
            shutil.rmtree(run)
    elif run.exists():  # interrupted before samples.npz was written
        shutil.rmtree(run)
    ran = not samples.exists()
    if ran:
        logger.info("sampling %d proposals at tau %g into %s", budget.n_samples, tau, run)
        sample = budget.sample_config(tau, seed)
        source: Any = str(ckpt)
        if sequence is not None:
            source = load_checkpoint(ckpt, device=sample.device, sequence=sequence)
        run_sampling(source, run, sample)
    else:
        logger.info("reusing the samples in %s", run)
    if log is not None:
        log.add("sample", run.name, ran, time.time() - t0)


def _ensure_metrics(
    run: Path, reference: Dataset, budget: BudgetConfig, seed: int, log: StageLog | None
) -> dict[str, Any]:
    """The evaluation stage of :func:`ensure_run`: ``report/metrics.json``, reused when it is
    newer than the samples and was asked for the same way."""
    t0 = time.time()
    metrics_path = run / "report" / "metrics.json"
    request = {
        "n_eval": budget.n_eval,
        "seed": seed,
        "tica_lag": budget.tica_lag,
        "reference": dataset_id(reference),
    }
    ran = True
    if metrics_path.exists() and _mtime(metrics_path) >= _mtime(run / "samples.npz"):
        if json.loads(metrics_path.read_text()).get("benchmark_request") == request:
            ran = False
    if ran:
        logger.info(
            "evaluating %s against %s (n_eval %d)", run, request["reference"], budget.n_eval
        )
        evaluate_run(
            run,
            reference,
            budget.evaluate_config(seed),
            out_dir=run / "report",
            extra_metrics={"benchmark_request": request},
        )
    else:
        logger.info("reusing the metrics in %s", metrics_path)
    if log is not None:
        log.add("evaluate", run.name, ran, time.time() - t0)
    return json.loads(metrics_path.read_text())


def ensure_tuned(
    checkpoint: str | Path,
    positions: np.ndarray,
    log_weights: np.ndarray | None,
    path: str | Path,
    config: TuneConfig,
    log: StageLog | None = None,
) -> dict[str, Any]:
    """:func:`arbg.experiments.tuning.tune_temperature` on ``positions``, cached in the JSON file
    ``path`` (``config.device`` may be ``"auto"``).

    The cache is reused when it was made from the same checkpoint (and is newer than its
    weights) with the same taus, ``n``, ``n_eval`` and seed.

    Returns
    -------
    dict: the tune result (``rows`` with ``tau``, ``e_w2``, ``t_w2``, ``score``, ``ess``,
    ``best_tau``) plus ``request``.
    """
    ckpt, path = Path(checkpoint).resolve(), Path(path)
    request = {
        "checkpoint": str(ckpt),
        "taus": [float(t) for t in config.taus],
        "n": config.n,
        "n_eval": config.n_eval,
        "seed": config.seed,
        "n_positions": int(len(positions)),
    }
    t0 = time.time()
    if path.exists() and _mtime(path) >= _mtime(ckpt / "model.safetensors"):
        cached = json.loads(path.read_text())
        if cached.get("request") == request:
            logger.info("reusing the temperature curve %s (best tau %g)", path, cached["best_tau"])
            if log is not None:
                log.add("tune", path.stem, False, time.time() - t0)
            return cached
    config = replace(config, device=resolve_device(config.device))
    logger.info("tuning tau over %s for %s (%d proposals each)", request["taus"], ckpt, config.n)
    lw = None
    if log_weights is not None and np.ptp(np.asarray(log_weights)) > 0:
        lw = np.asarray(log_weights)
    checkpoint_ = load_checkpoint(ckpt, device=config.device)
    result = tune_temperature(checkpoint_, positions, config, validation_log_weights=lw)
    result["request"] = request
    atomic_write_json(path, result)
    if log is not None:
        log.add("tune", path.stem, True, time.time() - t0)
    return result
