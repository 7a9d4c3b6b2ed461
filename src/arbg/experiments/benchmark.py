"""`arbg benchmark`: the head comparison table (the paper's Table 1) on one system, resumable.

Every head (``bins`` = ARBG, ``mol`` / ``gmm`` = the PixelCNN++ mixture baselines, ``givt``) is
trained with the same budget (preset, steps, batch, bins, seeds) by
:func:`arbg.train.trainer.train`,
sampled with the same number of energy evaluations (``n_samples`` proposals, one energy each) by
:func:`arbg.sampling.runs.run_sampling`, reweighted by SNIS and evaluated against the reference MD
by
:func:`arbg.eval.evaluate.evaluate_run` (E-W2 and T-W2 of the *resampled* reweighted ensemble, the
paper's metrics). The sampling temperature is tuned per trained model on the validation split of
the training data by :func:`arbg.experiments.tuning.tune_temperature` (every head by default, or
only the heads
in ``tune_heads``); the tuned model is then sampled again at its tau. MD at the same
energy-evaluation budget (one force evaluation per integration step, so ``n_samples`` steps) is
evaluated by :func:`arbg.eval.cost.md_cost_curve` on consecutive blocks of the training MD, one
block per seed.

Layout of the output directory ``DIR`` (every stage is reused when complete)::

    DIR/train/{head}-seed{s}/              arbg.train.trainer output (resumed from ``last``)
    DIR/tune/{head}-seed{s}.json           tune_temperature curve on the val split
    DIR/runs/{head}-seed{s}-tau{tau}/      arbg sample run; ``report/metrics.json``
    DIR/benchmark.json                     everything (config, command, rows, stage log)
    DIR/table.md, DIR/table.html           the table: mean +- std over seeds, best in bold,
                                           second best underlined

The resumable stages live in :mod:`arbg.experiments.stages` (shared with
:mod:`arbg.experiments.ablations`); the table
formatting (:func:`format_table`) is here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from arbg.data.datasets import Dataset
from arbg.eval.htmlkit import esc, html_table_page
from arbg.experiments.md_baseline import md_at_budget, md_steps_per_frame
from arbg.experiments.stages import (
    RESAMPLED,
    BudgetConfig,
    StageLog,
    as_dataset,
    dataset_id,
    ensure_run,
    ensure_trained,
    ensure_tuned,
    make_train_config,
    stats,
    tau_name,
)
from arbg.experiments.tuning import TuneConfig
from arbg.files import atomic_write_json, atomic_write_text
from arbg.nn.heads import HEADS

logger = logging.getLogger(__name__)

HEAD_LABELS = {"bins": "ARBG", "mol": "MoL-PixelCNN++", "gmm": "GMM-PixelCNN++", "givt": "GIVT"}
METRIC_COLUMNS = (("e_w2", "E-W2 ↓ (kT)"), ("t_w2", "T-W2 ↓ (rad)"))


@dataclass
class BenchmarkConfig(BudgetConfig):
    """:class:`BudgetConfig` plus what the head benchmark compares.

    Attributes
    ----------
    heads : heads to compare (keys of :data:`arbg.nn.heads.HEADS`).
    taus : tau grid of the per-model temperature tuning.
    tune_heads : heads whose tau is tuned (None: every head; ``[]``: none).
    tune_n : proposals per tau of the tuning.
    tune_n_eval : samples per W2 of the tuning.
    md_steps_per_frame : integration steps per saved MD frame of the training data (None: from
        the ``arbg md`` metadata, else 1, i.e. the first K frames).
    """

    heads: list[str] = field(default_factory=lambda: ["bins", "mol", "gmm", "givt"])
    taus: list[float] = field(default_factory=lambda: [0.9, 0.95, 1.0, 1.03, 1.06, 1.1])
    tune_heads: list[str] | None = field(default=None, metadata={"nargs": "*"})
    tune_n: int = 2000
    tune_n_eval: int = 1000
    md_steps_per_frame: int | None = None

    def validate(self) -> None:
        super().validate()
        check_heads(self.heads)
        check_heads(self.tune_heads or [], allow_empty=True)
        unknown = set(self.tune_heads or []) - set(self.heads)
        if unknown:
            raise ValueError(f"tune_heads {sorted(unknown)} are not among heads {self.heads}")
        if self.tuned_heads() and (not self.taus or any(t <= 0 for t in self.taus)):
            raise ValueError(
                f"taus must be a non-empty list of positive numbers, got {list(self.taus)}"
            )

    def tuned_heads(self) -> list[str]:
        """The heads whose temperature is tuned, in ``heads`` order."""
        tuned = self.heads if self.tune_heads is None else self.tune_heads
        return [h for h in self.heads if h in tuned]


def check_heads(heads: Sequence[str], allow_empty: bool = False) -> list[str]:
    """Validate head names against :data:`arbg.nn.heads.HEADS`; returns them as a list.

    Raises
    ------
    ValueError
        For an empty list (unless ``allow_empty``), an unknown head or a repeated head.
    """

    heads = list(heads)
    if not heads and not allow_empty:
        raise ValueError(f"at least one head is needed (known: {sorted(HEADS)})")
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; known heads: {sorted(HEADS)}")
    if len(set(heads)) != len(heads):
        raise ValueError(f"heads must be distinct, got {heads}")
    return heads


# --------------------------------------------------------------------------------------------------
# tables


def _cell(s: dict[str, Any]) -> str:
    if not s or s.get("n", 0) == 0 or not math.isfinite(s.get("mean", math.nan)):
        return "—"
    if s["n"] > 1:
        return f"{s['mean']:.3f} ± {s['std']:.3f}"
    return f"{s['mean']:.3f}"


def rank_marks(rows: Sequence[dict[str, Any]], key: str) -> list[str]:
    """Per row ``"best"``, ``"second"`` or ``""`` for column ``key`` (lowest mean is best)."""
    means = [r.get(key, {}).get("mean", math.nan) for r in rows]
    finite = sorted({round(m, 12) for m in means if math.isfinite(m)})
    out = []
    for m in means:
        if not math.isfinite(m):
            out.append("")
        elif round(m, 12) == finite[0]:
            out.append("best")
        elif len(finite) > 1 and round(m, 12) == finite[1]:
            out.append("second")
        else:
            out.append("")
    return out


def format_table(
    rows: Sequence[dict[str, Any]],
    title: str,
    notes: Sequence[str] = (),
    columns: Sequence[tuple[str, str]] = METRIC_COLUMNS,
) -> tuple[str, str]:
    """Markdown and HTML of a method x metric table (best **bold**, second best underlined).

    Parameters
    ----------
    rows : ``{"method": str, key: stats-dict}`` per row (see :func:`stats`).
    title : heading of both documents.
    notes : lines printed below the table.
    columns : ``(key, header)`` pairs.

    Returns
    -------
    (markdown, html) strings.
    """
    marks = {key: rank_marks(rows, key) for key, _ in columns}

    def md_cell(text: str, mark: str) -> str:
        return f"**{text}**" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text

    def html_cell(text: str, mark: str) -> str:
        text = esc(text)
        return (
            f"<b>{text}</b>" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text
        )

    head = ["Method", *[h for _, h in columns]]
    md = [
        f"# {title}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|",
    ]
    body = []
    for i, r in enumerate(rows):
        cells = [md_cell(_cell(r.get(k, {})), marks[k][i]) for k, _ in columns]
        md.append("| " + " | ".join([r["method"], *cells]) + " |")
        hcells = "".join(
            f"<td>{html_cell(_cell(r.get(k, {})), marks[k][i])}</td>" for k, _ in columns
        )
        body.append(f"<tr><td>{esc(r['method'])}</td>{hcells}</tr>")
    md += [""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(md), html_table_page(title, head, body, notes)


# --------------------------------------------------------------------------------------------------
# the benchmark


def _ensemble_means(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ens, vals in metrics.get("metrics", {}).items():
        out[ens] = {k: v.get("mean") for k, v in vals.items() if isinstance(v, dict)}
    for key in ("ess", "n_eval", "n_samples", "energy_evaluations", "tau"):
        if key in metrics:
            out[key] = metrics[key]
    return out


def _metric(metrics: dict[str, Any], key: str, ensemble: str = RESAMPLED) -> float:
    v = metrics.get("metrics", {}).get(ensemble, {}).get(key)
    return float(v["mean"]) if v and v.get("mean") is not None else math.nan


# long: a 27-line docstring, then the stages in order and the one result record
def run_benchmark(
    data: str | Path | Dataset,
    reference: str | Path | Dataset,
    out_dir: str | Path,
    config: BenchmarkConfig | None = None,
    *,
    topology: str | Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Train, tune, sample and evaluate every head with one budget; write the table.

    Parameters
    ----------
    data : training MD (anything :func:`arbg.data.datasets.load_dataset` reads, or a Dataset); its
        ``val`` split tunes tau, its frames in time order are the matched-budget MD.
    reference : independent reference MD for the metrics.
    out_dir : output directory (module docstring); re-running resumes.
    config : BenchmarkConfig (defaults if None).
    topology : PDB for array/trajectory inputs.
    command : the command line to record (the CLI passes its argv).

    Returns
    -------
    dict: the content of ``benchmark.json`` (``rows``, ``models``, ``md``, ``paths``,
    ``stages``, ...).

    Raises
    ------
    ValueError
        Unknown or repeated heads, bad taus or budgets, or a reference of another system.
    """

    cfg = config or BenchmarkConfig()
    cfg.validate()
    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = as_dataset(data, topology)
    ref = as_dataset(reference, topology, system=data.system)
    log = StageLog()
    tuned_heads = cfg.tuned_heads()
    if tuned_heads and len(data.split("val")) < 2:
        raise ValueError("tuning tau needs the val split of the training data; it is empty")
    logger.info(
        "benchmark: heads %s, seeds %s, %d steps x batch %d, %d samples per run, tuning %s",
        cfg.heads,
        cfg.seeds,
        cfg.steps,
        cfg.batch_size,
        cfg.n_samples,
        tuned_heads or "none",
    )
    models = {
        head: {str(s): _model_record(data, ref, cfg, head, s, out, log) for s in cfg.seeds}
        for head in cfg.heads
    }
    rows = _method_rows(models, cfg)
    spf, md, floor = _md_at_budget_and_floor(data, ref, cfg, models)
    rows.append(
        {"method": f"MD ({cfg.n_samples:,} energy evaluations)", "head": None, "tau": None}
        | {"e_w2": md["e_w2"], "t_w2": md["t_w2"]}
    )
    notes = _notes(cfg, data, ref, rows, md, spf, floor, command)
    title = f"arbg benchmark: {data.system.name}"
    md_text, html_text = format_table(rows, title, notes)
    paths = {
        "table_md": str(out / "table.md"),
        "table_html": str(out / "table.html"),
        "json": str(out / "benchmark.json"),
    }
    result = {
        "command": command,
        "title": title,
        "system": data.system.name,
        "data": dataset_id(data),
        "reference": dataset_id(ref),
        "config": asdict(cfg),
        "rows": rows,
        "models": models,
        "md": md,
        "md_floor": floor,
        "energy_evaluations_per_run": cfg.n_samples,
        "notes": notes,
        "paths": paths,
        "stages": log.records,
        "stage_wall_s": log.wall_s(),
        "ran": log.ran(),
        "wall_s": time.time() - t_start,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_outputs(out, md_text, html_text, result)
    return result


def _write_outputs(out: Path, md_text: str, html_text: str, result: dict[str, Any]) -> None:
    atomic_write_text(out / "table.md", md_text)
    atomic_write_text(out / "table.html", html_text)
    atomic_write_json(out / "benchmark.json", result)
    logger.info(
        "benchmark: wrote %s (%.0f s; stages %s)",
        out / "table.md",
        result["wall_s"],
        {k: round(v, 1) for k, v in result["stage_wall_s"].items()},
    )


def _md_at_budget_and_floor(
    data: Dataset, ref: Dataset, cfg: BenchmarkConfig, models: dict[str, dict[str, Any]]
) -> tuple[int | None, dict[str, Any], dict[str, Any]]:
    """MD at the runs' energy-evaluation budget (steps per frame, ``md_at_budget``) and the
    MD-vs-MD floor of the reference (from the first head's tau = 1 runs); drops the metrics the
    model records held for the table."""
    spf = cfg.md_steps_per_frame or md_steps_per_frame(data)
    md = md_at_budget(data, ref, cfg.n_samples, cfg.seeds, spf or 1, cfg.n_eval)
    m_first = [models[cfg.heads[0]][str(s)]["_m1"] for s in cfg.seeds]
    floor = {
        key: stats([_metric(m, key, "md_floor") for m in m_first]) for key, _ in METRIC_COLUMNS
    }
    for head in models.values():
        for rec in head.values():
            rec.pop("_m1", None)
            rec.pop("_mt", None)
    return spf, md, floor


def _model_record(
    data: Dataset,
    ref: Dataset,
    cfg: BenchmarkConfig,
    head: str,
    seed: int,
    out: Path,
    log: StageLog,
) -> dict[str, Any]:
    """Train one head with one seed, sample and evaluate it at tau = 1 and, when its tau is
    tuned, at the tuned tau. ``_m1`` / ``_mt`` hold the metrics until the table is made."""
    key = f"{head}-seed{seed}"
    logger.info("benchmark: %s", key)
    ckpt = ensure_trained(data, out / "train" / key, make_train_config(cfg, head, seed), log)
    rec: dict[str, Any] = {"checkpoint": str(ckpt)}
    run1 = out / "runs" / f"{key}-{tau_name(1.0)}"
    m1 = ensure_run(ckpt, run1, ref, cfg, 1.0, seed, log)
    rec["tau1"] = {"run": str(run1), **_ensemble_means(m1)}
    rec["_m1"] = m1
    if head in cfg.tuned_heads():
        tune = ensure_tuned(
            ckpt,
            data.split("val"),
            data.split_log_weights("val"),
            out / "tune" / f"{key}.json",
            TuneConfig(tuple(cfg.taus), cfg.tune_n, cfg.tune_n_eval, seed, cfg.device),
            log,
        )
        tau = float(tune["best_tau"])
        run_dir = out / "runs" / f"{key}-{tau_name(tau)}"
        mt = ensure_run(ckpt, run_dir, ref, cfg, tau, seed, log)
        rec["tune"] = {k: tune[k] for k in ("rows", "best_tau", "n", "n_eval")}
        rec["tuned"] = {"run": str(run_dir), **_ensemble_means(mt)}
        rec["_mt"] = mt
    return rec


def _method_rows(models: dict[str, dict[str, Any]], cfg: BenchmarkConfig) -> list[dict[str, Any]]:
    """The table rows of the heads: every head at tau = 1, then the tuned ones."""
    rows: list[dict[str, Any]] = []
    for variant, label in (("_m1", "τ = 1"), ("_mt", "tuned τ")):
        for head in cfg.heads:
            recs = [models[head][str(s)] for s in cfg.seeds]
            if variant not in recs[0]:
                continue
            row: dict[str, Any] = {
                "method": f"{HEAD_LABELS.get(head, head)} ({label})",
                "head": head,
                "tau": "1" if variant == "_m1" else "tuned",
            }
            for key, _ in METRIC_COLUMNS:
                row[key] = stats([_metric(r[variant], key) for r in recs])
            if variant == "_mt":
                row["taus"] = [r["tune"]["best_tau"] for r in recs]
            # the evaluation's checks (arbg.eval.evaluate): collapsed weights, worse metrics
            row["warnings"] = [
                f"seed {s}: {w}"
                for s, r in zip(cfg.seeds, recs, strict=True)
                for w in r[variant].get("warnings", [])
            ]
            rows.append(row)
    return rows


def _notes(
    cfg: BenchmarkConfig,
    data: Dataset,
    ref: Dataset,
    rows: list[dict[str, Any]],
    md: dict[str, Any],
    spf: int | None,
    floor: dict[str, Any],
    command: str | None,
) -> list[str]:
    """The lines under the table: data, budget, tuning, the MD row and its floor, the command."""
    tuned_heads = cfg.tuned_heads()
    notes = [
        f"System {data.system.name}; training data {dataset_id(data)}; reference "
        f"{dataset_id(ref)}.",
        f"Budget per model: preset {cfg.preset}, {cfg.steps} steps x batch {cfg.batch_size}, "
        f"{cfg.n_bins or 'default'} bins, K = {cfg.n_mixtures} mixture components; "
        f"seeds {list(cfg.seeds)} (mean ± std over seeds).",
        f"Each run: {cfg.n_samples:,} proposals = energy evaluations, SNIS, metrics of "
        f"{cfg.n_eval:,} resampled conformations against the reference.",
        (
            f"Tuned τ: grid {list(cfg.taus)} on the val split of the training data "
            f"({cfg.tune_n:,} proposals per τ, not counted in the budget); heads tuned: "
            f"{', '.join(tuned_heads)}; chosen: "
            + "; ".join(f"{r['head']} {r['taus']}" for r in rows if r.get("taus"))
            + "."
        )
        if tuned_heads
        else "No temperature tuning.",
        (
            f"MD row: {md['n_frames']} consecutive frames of the training MD per seed (block i "
            f"for seed i; {spf} integration steps = energy evaluations per frame), the same "
            f"{cfg.n_samples:,} energy evaluations (md_cost_curve)."
        )
        if spf
        else (
            f"MD row: the first {md['n_frames']} frames of the training MD per seed (block i for "
            "seed i); the data record no integrator, so one frame counts as one energy "
            "evaluation (md_cost_curve)."
        ),
        f"MD-vs-MD floor of the reference (two halves, not a method): E-W2 "
        f"{floor['e_w2']['mean']:.3f}, T-W2 {floor['t_w2']['mean']:.3f}.",
        "Best value per column in bold, second best underlined.",
    ]
    notes += [f"WARNING {r['method']}, {w}" for r in rows for w in r.get("warnings", [])]
    if command:
        notes.append(f"Command: {command}")
    return notes
