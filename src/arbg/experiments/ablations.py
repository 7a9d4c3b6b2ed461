"""`arbg ablate bins|temperature`: the paper's bin-count and sampling-temperature ablations.

- :func:`ablate_bins`: for every bin count ``L``, train an ARBG model (``bins`` head) with the
  same budget (:class:`arbg.experiments.stages.BudgetConfig`), sample ``n_samples`` proposals at
  tau = 1,
  reweight and evaluate against the reference (E-W2, T-W2 of the resampled reweighted ensemble),
  beside the discretize / de-quantize bound E-W2 of the same ``L``
  (:func:`arbg.nn.coordinates.quantization_bound` with the trained model's own standardization
  and bin range). Writes ``ablate_bins.json``, ``ablate_bins.csv`` and ``ablate_bins.png``. Layout:
  ``DIR/train/bins{L}-seed{s}/`` and ``DIR/runs/bins{L}-seed{s}-tau1/``, reused when complete.
- :func:`ablate_temperature`: the temperature curve of one checkpoint against the reference MD
  by :func:`arbg.experiments.tuning.tune_temperature` (proposals at each tau, SNIS, resampled E-W2
  and T-W2,
  ESS), repeated over seeds. Writes ``ablate_temperature.json``, ``.csv`` and ``.png``; each
  seed's curve is cached in ``DIR/curves/seed{s}.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arbg.chem.systems import SystemSpec, build_system
from arbg.data.datasets import Dataset
from arbg.experiments.stages import (
    RESAMPLED,
    BudgetConfig,
    StageLog,
    as_dataset,
    dataset_id,
    ensure_run,
    ensure_trained,
    ensure_tuned,
    held_out_reference,
    make_train_config,
    stats,
    tau_name,
)
from arbg.experiments.tuning import TuneConfig
from arbg.files import atomic_write_json, atomic_write_text
from arbg.nn.coordinates import quantization_bound
from arbg.train.checkpoints import load_checkpoint, read_config

logger = logging.getLogger(__name__)


def check_bins(bins: Sequence[int]) -> list[int]:
    """Validate a list of bin counts (non-empty, distinct integers >= 2), sorted.

    Raises
    ------
    ValueError
    """
    bins = list(bins)
    if not bins:
        raise ValueError("the bin ablation needs at least one bin count (e.g. --bins 256 1024)")
    if any(int(b) != b or b < 2 for b in bins):
        raise ValueError(f"bin counts must be integers >= 2, got {bins}")
    if len(set(bins)) != len(bins):
        raise ValueError(f"bin counts must be distinct, got {bins}")
    return sorted(int(b) for b in bins)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _plot(
    path: Path,
    x: Sequence[float],
    panels: Sequence[tuple[str, list[dict[str, Any]]]],
    xlabel: str,
    log2x: bool = False,
) -> None:
    """One panel per ``(ylabel, series)``; a series is ``{label, y, yerr?, style}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.5), squeeze=False)
    try:
        for ax, (ylabel, series) in zip(axes[0], panels, strict=True):
            positive = True
            for s in series:
                y = np.asarray(s["y"], dtype=np.float64)
                yerr = s.get("yerr")
                ax.errorbar(x, y, yerr=yerr, fmt=s.get("style", "o-"), capsize=3, label=s["label"])
                positive &= bool(np.all(y[np.isfinite(y)] > 0))
            if log2x:
                ax.set_xscale("log", base=2)
            if positive and len(series) > 1:
                ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _bound_frames(data: Dataset, bound_frames: int) -> np.ndarray:
    """The training frames of the quantization bound (stride-subsampled to ``bound_frames``)."""
    frames = data.split("train")
    if bound_frames and len(frames) > bound_frames:
        frames = frames[:: len(frames) // bound_frames][:bound_frames]
    return frames


def ablate_bins(
    data: str | Path | Dataset,
    out_dir: str | Path,
    bins: Sequence[int],
    config: BudgetConfig | None = None,
    *,
    reference: str | Path | Dataset | None = None,
    topology: str | Path | None = None,
    bound_frames: int = 5000,
    command: str | None = None,
) -> dict[str, Any]:
    """Bin-count ablation: metrics after reweighting and the quantization bound against ``L``.

    Parameters
    ----------
    data : training MD (path or Dataset).
    out_dir : output directory (module docstring); re-running resumes.
    bins : bin counts ``L`` (distinct, >= 2).
    config : the budget of every model (``n_bins`` and ``heads`` are ignored: the head is
        ``bins``); defaults if None.
    reference : independent reference MD (default: the test block of ``data``, with a warning).
    topology : PDB for array/trajectory inputs.
    bound_frames : training frames (stride-subsampled) in the quantization bound.
    command : the command line to record.

    Returns
    -------
    dict: the content of ``ablate_bins.json``; ``rows[i]`` has ``n_bins``, ``e_w2`` and
    ``t_w2`` (stats over seeds of the resampled reweighted ensemble), ``proposal_e_w2``,
    ``ess``, ``bound_e_w2`` and ``bin_width_pm``.
    """
    bins = check_bins(bins)
    cfg = config or BudgetConfig()
    cfg.validate()
    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = as_dataset(data, topology)
    ref = (
        held_out_reference(data)
        if reference is None
        else as_dataset(reference, topology, system=data.system)
    )
    log = StageLog()
    frames = _bound_frames(data, bound_frames)
    rows = [_bins_row(data, ref, frames, n_bins, cfg, out, log) for n_bins in bins]
    paths = {k: str(out / f"ablate_bins.{k}") for k in ("json", "csv", "png")}
    _write_bins_outputs(out, rows)
    result = {
        "command": command,
        "system": data.system.name,
        "data": dataset_id(data),
        "reference": dataset_id(ref),
        "bins": bins,
        "config": asdict(cfg),
        "bound_frames": int(len(frames)),
        "rows": rows,
        "paths": paths,
        "stages": log.records,
        "stage_wall_s": log.wall_s(),
        "ran": log.ran(),
        "wall_s": time.time() - t_start,
    }
    atomic_write_json(out / "ablate_bins.json", result)
    logger.info("bin ablation: wrote %s", out / "ablate_bins.json")
    return result


def _bins_row(
    data: Dataset,
    ref: Dataset,
    frames: np.ndarray,
    n_bins: int,
    cfg: BudgetConfig,
    out: Path,
    log: StageLog,
) -> dict[str, Any]:
    """One bin count: train, sample and evaluate per seed, then the quantization bound."""
    runs, ckpts = [], []
    for seed in cfg.seeds:
        key = f"bins{n_bins}-seed{seed}"
        logger.info("bin ablation: L = %d, seed %d", n_bins, seed)
        ckpt = ensure_trained(
            data, out / "train" / key, make_train_config(cfg, "bins", seed, n_bins=n_bins), log
        )
        ckpts.append(ckpt)
        run_dir = out / "runs" / f"{key}-{tau_name(1.0)}"
        m = ensure_run(ckpt, run_dir, ref, cfg, 1.0, seed, log)
        means = {ens: {k: v["mean"] for k, v in vals.items()} for ens, vals in m["metrics"].items()}
        runs.append(
            {
                "seed": seed,
                "run": str(run_dir),
                "checkpoint": str(ckpt),
                "metrics": means,
                "ess": m.get("ess"),
            }
        )
    t0 = time.time()
    ck = load_checkpoint(ckpts[0])  # the model's own standardization and bin range
    bound = quantization_bound(
        frames,
        ck.standardization,
        [n_bins],
        data.system.reduced_energy,
        np.random.default_rng(cfg.seeds[0]),
        binning_range=(ck.binning.low, ck.binning.high),
    )[0]
    log.add("bound", f"bins{n_bins}", True, time.time() - t0)
    logger.info(
        "bin ablation: L = %d, quantization bound E-W2 %.4f kT (%.2f pm bins)",
        n_bins,
        bound["e_w2"],
        bound["bin_width_pm"],
    )

    def col(ens: str, key: str) -> dict[str, Any]:
        return stats([r["metrics"].get(ens, {}).get(key, math.nan) for r in runs])

    return {
        "n_bins": n_bins,
        "e_w2": col(RESAMPLED, "e_w2"),
        "t_w2": col(RESAMPLED, "t_w2"),
        "proposal_e_w2": col("proposal", "e_w2"),
        "proposal_t_w2": col("proposal", "t_w2"),
        "ess": stats([r["ess"] if r["ess"] is not None else math.nan for r in runs]),
        "bound_e_w2": bound["e_w2"],
        "bin_width_pm": bound["bin_width_pm"],
        "bound": bound,
        "runs": runs,
    }


def _mean_std(r: dict[str, Any], *keys: str) -> list[float]:
    return [x for k in keys for x in (r[k]["mean"], r[k]["std"])]


def _write_bins_outputs(out: Path, rows: list[dict[str, Any]]) -> None:
    """``ablate_bins.csv`` and ``ablate_bins.png`` (E-W2 beside the bound, T-W2, against L)."""
    _write_csv(
        out / "ablate_bins.csv",
        "n_bins e_w2_mean e_w2_std t_w2_mean t_w2_std bound_e_w2 bin_width_pm n_seeds".split(),
        [
            [r["n_bins"], *_mean_std(r, "e_w2", "t_w2"), r["bound_e_w2"], r["bin_width_pm"]]
            + [r["e_w2"]["n"]]
            for r in rows
        ],
    )
    model = _series(rows, "e_w2", "ARBG, reweighted")
    bound = {"label": "discretization bound", "y": [r["bound_e_w2"] for r in rows], "style": "s--"}
    panels = [
        ("E-W2 (kT)", [*model, bound]),
        ("T-W2 (rad)", _series(rows, "t_w2", "ARBG, reweighted")),
    ]
    _plot(out / "ablate_bins.png", [r["n_bins"] for r in rows], panels, "bins L", log2x=True)


def _series(rows: list[dict[str, Any]], key: str, label: str) -> list[dict[str, Any]]:
    """One plotted series: the mean of ``key`` per row with its std as error bars."""
    return [
        {"label": label, "y": [r[key]["mean"] for r in rows], "yerr": [r[key]["std"] for r in rows]}
    ]


def _pm(stat: dict[str, Any]) -> str:
    """``mean+-std`` of a repeated metric, 16 characters wide (the ablation tables' cells)."""
    return f"{stat['mean']:8.3f}+-{stat['std']:<6.3f}"


def format_bins_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The rows of :func:`ablate_bins` as a text table (L, E-W2, T-W2, bound E-W2)."""
    lines = [f"{'bins':>6s} {'E-W2':>16s} {'T-W2':>16s} {'bound E-W2':>11s}"]
    for r in rows:
        lines.append(f"{r['n_bins']:6d} {_pm(r['e_w2'])} {_pm(r['t_w2'])} {r['bound_e_w2']:11.4f}")
    return lines


@dataclass(frozen=True)
class AblateTemperatureConfig:
    """The sampling-temperature ablation of `arbg ablate temperature`.

    Attributes
    ----------
    taus : sampling temperatures (positive, distinct).
    n_samples : proposals per tau.
    n_eval : resampled conformations per W2.
    seeds : repeats (mean +- std over them); seed s tunes with seed 1000 s.
    device : where the model runs (auto: CUDA when available).
    """

    taus: tuple[float, ...] = (0.9, 0.95, 1.0, 1.03, 1.06, 1.1)
    n_samples: int = 2000
    n_eval: int = 1000
    seeds: tuple[int, ...] = (0,)
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})

    def validate(self) -> None:
        """Raise ValueError for taus or seeds the ablation cannot run."""
        taus = list(self.taus)
        if not taus or any(not t > 0 for t in taus):
            raise ValueError(f"taus must be a non-empty list of positive numbers, got {taus}")
        if len(set(taus)) != len(taus):
            raise ValueError(f"taus must be distinct, got {taus}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(
                f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)}"
            )


def ablate_temperature(
    checkpoint: str | Path,
    reference: str | Path | Dataset,
    out_dir: str | Path,
    config: AblateTemperatureConfig | None = None,
    *,
    topology: str | Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Sampling-temperature ablation of one checkpoint against reference MD.

    For every seed ``s``, :func:`arbg.experiments.tuning.tune_temperature` (seed ``1000 s``) draws
    ``n_samples`` proposals at each tau, reweights them (SNIS) and measures E-W2 and T-W2 of
    ``n_eval`` resampled conformations against the reference (stride-subsampled to ``n_eval``
    frames, its frame weights carried when it is weighted), and the ESS.

    Parameters
    ----------
    checkpoint : checkpoint directory.
    reference : reference MD (path or Dataset) of the checkpoint's system.
    out_dir : output directory (module docstring); cached curves are reused.
    config : taus, sample counts, seeds and device (:class:`AblateTemperatureConfig`; None: its
        defaults).
    topology : PDB for an array/trajectory reference.
    command : the command line to record.

    Returns
    -------
    dict: the content of ``ablate_temperature.json``; ``rows[i]`` has ``tau`` and stats of
    ``e_w2``, ``t_w2``, ``score`` (their sum), ``ess``, ``relative_ess``; ``best_tau`` has the
    lowest mean score.
    """
    cfg = config if config is not None else AblateTemperatureConfig()
    cfg.validate()
    taus = [float(t) for t in cfg.taus]
    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    system = None
    if not isinstance(reference, Dataset):
        spec = SystemSpec.from_dict(read_config(checkpoint)["system"]["spec"])
        system = build_system(spec, minimize=False)
    ref = as_dataset(reference, topology, system=system)
    log = StageLog()
    curves = []
    for seed in cfg.seeds:
        logger.info("temperature ablation: seed %d, taus %s", seed, taus)
        tune = TuneConfig(tuple(taus), cfg.n_samples, cfg.n_eval, 1000 * int(seed), cfg.device)
        path = out / "curves" / f"seed{seed}.json"
        curves.append(ensure_tuned(checkpoint, ref.positions, ref.log_weights, path, tune, log))
    keys = ("e_w2", "t_w2", "score", "ess", "relative_ess")
    rows = [
        {"tau": tau, **{k: stats([c["rows"][i][k] for c in curves]) for k in keys}}
        for i, tau in enumerate(taus)
    ]
    best = min(
        rows, key=lambda r: r["score"]["mean"] if math.isfinite(r["score"]["mean"]) else math.inf
    )
    _write_temperature_outputs(out, rows)
    result = {
        "command": command,
        "checkpoint": str(Path(checkpoint).resolve()),
        "reference": dataset_id(ref),
        "taus": taus,
        "seeds": list(cfg.seeds),
        "n_samples": cfg.n_samples,
        "n_eval": cfg.n_eval,
        "rows": rows,
        "best_tau": best["tau"],
        "curves": [{k: c[k] for k in ("rows", "best_tau")} for c in curves],
        "paths": {k: str(out / f"ablate_temperature.{k}") for k in ("json", "csv", "png")},
        "stages": log.records,
        "ran": log.ran(),
        "wall_s": time.time() - t_start,
    }
    atomic_write_json(out / "ablate_temperature.json", result)
    logger.info(
        "temperature ablation: best tau %g; wrote %s", best["tau"], out / "ablate_temperature.json"
    )
    return result


def _write_temperature_outputs(out: Path, rows: list[dict[str, Any]]) -> None:
    """``ablate_temperature.csv`` and ``.png`` (E-W2, T-W2 and relative ESS against tau)."""
    _write_csv(
        out / "ablate_temperature.csv",
        ["tau", "e_w2_mean", "e_w2_std", "t_w2_mean", "t_w2_std", "relative_ess_mean", "n_seeds"],
        [
            [r["tau"], *_mean_std(r, "e_w2", "t_w2"), r["relative_ess"]["mean"], r["e_w2"]["n"]]
            for r in rows
        ],
    )
    label = "reweighted (resampled)"
    panels = [
        ("E-W2 (kT)", _series(rows, "e_w2", label)),
        ("T-W2 (rad)", _series(rows, "t_w2", label)),
        ("relative ESS", _series(rows, "relative_ess", label)),
    ]
    _plot(
        out / "ablate_temperature.png", [r["tau"] for r in rows], panels, "sampling temperature tau"
    )


def format_temperature_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The rows of :func:`ablate_temperature` as a text table (tau, E-W2, T-W2, relative ESS)."""
    lines = [f"{'tau':>6s} {'E-W2':>16s} {'T-W2':>16s} {'rel. ESS':>9s}"]
    for r in rows:
        lines.append(
            f"{r['tau']:6.3f} {_pm(r['e_w2'])} {_pm(r['t_w2'])} {r['relative_ess']['mean']:9.4f}"
        )
    return lines


def load_result(path: str | Path) -> dict[str, Any]:
    """Read back an ablation or benchmark JSON."""
    return json.loads(Path(path).read_text())
