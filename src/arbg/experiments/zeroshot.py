"""Zero-shot evaluation of a transferable checkpoint on the held-out sequences of a corpus.

The paper's transferable experiment (ROBIN, §5 and Table 2 of ``docs/references.md``):
a model trained on many sequences samples peptides it never saw; each sequence's proposals are
reweighted (SNIS) against its own force field and compared with that sequence's MD. For every
sequence of a corpus split (default ``test``), :func:`evaluate_zero_shot`

1. binds the checkpoint to the sequence (the force field, solvent and temperature stored in the
   checkpoint; :func:`arbg.nn.conditioning.load_transferable`) and samples ``n_samples`` proposals
   with exact log q (:func:`arbg.sampling.runs.run_sampling`, the same run directory as
   ``arbg sample CHECKPOINT --sequence SEQ``);
2. evaluates them against the sequence's corpus MD (:func:`arbg.eval.evaluate.evaluate_run`): E-W2,
   T-W2 and TICA-W2 of the proposal and of the reweighted ensemble, the MD-vs-MD floor;
3. evaluates MD that spent the same number of energy evaluations (one force evaluation per
   integration step: the first ``n_samples`` steps of the sequence's MD, at its saved stride;
   :func:`arbg.experiments.md_baseline.md_at_budget`).

Everything is resumable: a sequence whose run and metrics exist with the same settings is reused.
The table (``table.md``, ``table.html``) has one row per sequence and the mean over sequences;
``zero_shot.json`` has every number.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arbg.data.loaders import load_corpus
from arbg.eval.htmlkit import esc, html_table_page
from arbg.experiments.md_baseline import md_at_budget, md_steps_per_frame
from arbg.experiments.stages import BudgetConfig, ensure_run
from arbg.files import atomic_write_json, atomic_write_text
from arbg.train.checkpoints import read_config

logger = logging.getLogger(__name__)

METRICS = ("e_w2", "t_w2", "tica_w2")
ENSEMBLES = ("proposal", "reweighted_resampled", "md_floor")


@dataclass
class ZeroShotConfig:
    """Settings of a zero-shot evaluation.

    Attributes
    ----------
    split : corpus split whose sequences are evaluated (``test``: never seen in training).
    sequences : evaluate only these (default: all sequences of ``split``).
    n_samples : proposals per sequence (= energy evaluations of the BG).
    n_eval : samples per W2 (capped at half the reference frames by the MD floor).
    tau : sampling temperature.
    seed : sampling and evaluation seed.
    tica_lag : TICA lag in reference frames.
    device : ``cpu`` or ``cuda``.
    report : also write each sequence's HTML report and PNGs (slower).
    """

    split: str = "test"
    sequences: list[str] | None = field(default=None, metadata={"comma": True})
    n_samples: int = field(default=5000, metadata={"flag": "--n"})
    n_eval: int = 1000
    tau: float = 1.0
    seed: int = 0
    tica_lag: int = 100
    device: str = field(default="cpu", metadata={"choices": ("cpu", "cuda")})
    report: bool = False

    def validate(self) -> None:
        if self.n_samples < 2 or self.n_eval < 2:
            raise ValueError(
                f"n_samples and n_eval must be >= 2, got {self.n_samples}, {self.n_eval}"
            )
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be positive, got {self.tau}")


def evaluate_sequence(
    checkpoint: str | Path, corpus: Any, sequence: str, out_dir: str | Path, cfg: ZeroShotConfig
) -> dict[str, Any]:
    """Sample, reweight and evaluate one sequence (resumable); its row of the table.

    Returns
    -------
    dict with ``sequence``, ``n_atoms``, ``ess``, ``unique``, ``energy_evaluations``,
    ``reference_frames``, ``wall_s`` and, per ensemble of :data:`ENSEMBLES` plus ``md_matched``
    (MD at the same number of energy evaluations), the metrics of :data:`METRICS` (TICA-W2 is
    not computed for ``md_matched``).
    """

    t0 = time.time()
    ref = corpus.dataset(sequence)
    budget = BudgetConfig(
        n_samples=cfg.n_samples,
        n_eval=cfg.n_eval,
        tica_lag=cfg.tica_lag,
        device=cfg.device,
        report=cfg.report,
        seeds=[cfg.seed],
    )
    metrics = ensure_run(
        checkpoint, Path(out_dir) / sequence, ref, budget, cfg.tau, cfg.seed, sequence=sequence
    )
    steps = md_steps_per_frame(ref) or 1
    evals = int(metrics.get("energy_evaluations", cfg.n_samples))
    md = md_at_budget(ref, ref, evals, [cfg.seed], steps, cfg.n_eval)
    row: dict[str, Any] = {
        "sequence": sequence,
        "n_atoms": int(ref.system.n_atoms),
        "ess": float(metrics["ess"]),
        "unique": metrics.get("unique_resampled"),
        "energy_evaluations": evals,
        "reference_frames": len(ref),
        "md_matched_frames": md["n_frames"],
        "wall_s": round(time.time() - t0, 1),
    }
    for ens in ENSEMBLES:
        row[ens] = {k: metrics["metrics"][ens][k]["mean"] for k in METRICS}
    row["md_matched"] = {"e_w2": md["e_w2"]["mean"], "t_w2": md["t_w2"]["mean"], "tica_w2": None}
    row["warnings"] = list(metrics.get("warnings", []))  # arbg.eval.evaluate's checks
    return row


def _mean_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sequence": f"mean ({len(rows)})",
        "ess": float(np.mean([r["ess"] for r in rows])),
    }
    for ens in (*ENSEMBLES, "md_matched"):
        out[ens] = {}
        for k in METRICS:
            vals = [
                r[ens][k] for r in rows if r[ens].get(k) is not None and math.isfinite(r[ens][k])
            ]
            out[ens][k] = float(np.mean(vals)) if vals else None
    return out


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.3g}" if abs(v) >= 1e4 else f"{v:.3f}"


_COLUMNS = [("ESS", None, "ess")] + [
    (f"{name} {lab}", ens, key)
    for key, name in (("e_w2", "E-W2"), ("t_w2", "T-W2"), ("tica_w2", "TICA-W2"))
    for ens, lab in (
        ("proposal", "prop"),
        ("reweighted_resampled", "rew"),
        ("md_matched", "MD@K"),
        ("md_floor", "floor"),
    )
    if not (key == "tica_w2" and ens == "md_matched")
]


def format_zero_shot_table(
    rows: Sequence[dict[str, Any]], title: str, notes: Sequence[str] = ()
) -> tuple[str, str]:
    """Markdown and HTML of the per-sequence table (rows of :func:`evaluate_sequence` and the
    mean row); in each row the better of proposal and reweighted is **bold**."""

    def cells(r: dict[str, Any]) -> list[tuple[str, bool]]:
        """(text, bold) per column."""
        out = []
        for _, ens, key in _COLUMNS:
            v = r.get(key) if ens is None else r[ens].get(key)
            bold = False
            if ens in ("proposal", "reweighted_resampled") and v is not None:
                other = "proposal" if ens == "reweighted_resampled" else "reweighted_resampled"
                w = r[other].get(key)
                bold = w is not None and math.isfinite(v) and v <= w
            out.append((_fmt(v), bold))
        return out

    head = ["Sequence", *[c[0] for c in _COLUMNS]]
    md = [
        f"# {title}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(_COLUMNS)) + "|",
    ]
    body = []
    for r in rows:
        c = cells(r)
        md.append(
            "| " + " | ".join([r["sequence"], *(f"**{t}**" if b else t for t, b in c)]) + " |"
        )
        hc = "".join(f"<td><b>{esc(t)}</b></td>" if b else f"<td>{esc(t)}</td>" for t, b in c)
        body.append(f"<tr><td>{esc(r['sequence'])}</td>{hc}</tr>")
    md += [""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(md), html_table_page(title, head, body, notes, max_width_em=80)


def evaluate_zero_shot(
    checkpoint: str | Path,
    corpus_dir: str | Path,
    out_dir: str | Path,
    config: ZeroShotConfig | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics of a transferable checkpoint on a corpus split (module docstring).

    Parameters
    ----------
    checkpoint : transferable checkpoint directory (``arbg train-transferable``).
    corpus_dir : ``arbg corpus`` directory with MD of the sequences to evaluate.
    out_dir : one run directory per sequence, plus ``table.md``, ``table.html`` and
        ``zero_shot.json``.

    Returns
    -------
    dict with ``config``, ``rows`` (per sequence), ``mean`` and ``seen_in_training`` (sequences
    of the evaluated set that the checkpoint was trained on; empty for a proper held-out split).

    Raises
    ------
    ValueError
        Not a transferable checkpoint, an unknown split or sequence, or bad settings.
    """

    cfg = config or ZeroShotConfig()
    cfg.validate()
    ckpt = Path(checkpoint).resolve()
    ck_config = read_config(ckpt)
    if not ck_config.get("transferable"):
        raise ValueError(
            f"{ckpt} is a single-system checkpoint; zero-shot evaluation needs a "
            "transferable one (arbg train-transferable)"
        )
    corpus = load_corpus(corpus_dir)
    seqs = _selected_sequences(corpus, corpus_dir, cfg)
    trained_on = set(ck_config.get("corpus", {}).get("train_sequences", []))
    seen = sorted(set(seqs) & trained_on)
    if seen:
        logger.warning(
            "%d evaluated sequence(s) were in the training set: %s", len(seen), ", ".join(seen)
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, seq in enumerate(seqs):
        logger.info("zero-shot %d/%d: %s", i + 1, len(seqs), seq)
        rows.append(evaluate_sequence(ckpt, corpus, seq, out, cfg))
        _log_row(rows[-1])
    mean = _mean_row(rows)
    result = {
        "checkpoint": str(ckpt),
        "corpus": str(Path(corpus_dir).resolve()),
        "config": asdict(cfg),
        "rows": rows,
        "mean": mean,
        "seen_in_training": seen,
    }
    notes = _notes(ckpt, corpus_dir, cfg, seen)
    md_text, page = format_zero_shot_table([*rows, mean], "arbg zero-shot evaluation", notes)
    atomic_write_json(out / "zero_shot.json", result)
    atomic_write_text(out / "table.md", md_text)
    atomic_write_text(out / "table.html", page)
    return result


def _selected_sequences(corpus: Any, corpus_dir: str | Path, cfg: ZeroShotConfig) -> list[str]:
    """``cfg.sequences`` (upper case, each with MD in the corpus), else the ``cfg.split`` split."""
    if cfg.sequences:
        seqs = [s.upper() for s in cfg.sequences]
        unknown = [s for s in seqs if s not in corpus]
        if unknown:
            raise ValueError(f"sequence(s) {', '.join(unknown)} have no MD in {corpus_dir}")
    else:
        if cfg.split not in corpus.splits:
            raise ValueError(
                f"{corpus_dir} has no split {cfg.split!r}; available: {', '.join(corpus.splits)}"
            )
        seqs = corpus.splits[cfg.split]
    if not seqs:
        raise ValueError(f"no finished sequences to evaluate in {corpus_dir} ({cfg.split})")
    return list(seqs)


def _log_row(r: dict[str, Any]) -> None:
    logger.info(
        "%s: ESS %.1f, E-W2 %.3g -> %.3g, T-W2 %.3f -> %.3f (MD@%d %.3f)",
        r["sequence"],
        r["ess"],
        r["proposal"]["e_w2"],
        r["reweighted_resampled"]["e_w2"],
        r["proposal"]["t_w2"],
        r["reweighted_resampled"]["t_w2"],
        r["energy_evaluations"],
        r["md_matched"]["t_w2"],
    )


def _notes(ckpt: Path, corpus_dir: str | Path, cfg: ZeroShotConfig, seen: list[str]) -> list[str]:
    """The lines under the zero-shot table."""
    notes = [
        f"checkpoint {ckpt.name}; corpus {Path(corpus_dir).name}, split {cfg.split}; "
        f"{cfg.n_samples} proposals per sequence at tau {cfg.tau:g}, seed {cfg.seed}",
        f"W2 on {cfg.n_eval} samples against the sequence's MD (stride-subsampled); "
        "prop: raw proposal; rew: reweighted (SNIS, resampled); floor: MD vs MD (two "
        "disjoint blocks of the reference)",
        "MD@K: MD that spent the same energy evaluations K as the BG (its first K integration "
        "steps, frames at the saved stride)",
        "bold: the better of proposal and reweighted",
    ]
    if seen:
        notes.append(f"seen in training: {', '.join(seen)}")
    return notes


def zero_shot_summary(result: dict[str, Any]) -> str:
    """The closing lines: mean proposal -> reweighted E-W2 and T-W2 over the evaluated
    sequences, each said better or worse, then every sequence's warnings (collapsed weights,
    metrics made worse by the weights)."""
    m = result["mean"]
    parts = []
    for key, name in (("e_w2", "E-W2 (kT)"), ("t_w2", "T-W2 (rad)")):
        prop, rew = m["proposal"][key], m["reweighted_resampled"][key]
        verdict = "better" if rew <= prop else "WORSE than the proposal"
        parts.append(f"{name} {_fmt(prop)} -> {_fmt(rew)} ({verdict})")
    lines = [f"mean over {len(result['rows'])} sequences: " + ", ".join(parts)]
    collapsed = [r for r in result["rows"] if any("collapsed" in w for w in r.get("warnings", []))]
    if collapsed:
        ess = ", ".join(f"{r['sequence']} {r['ess']:.1f}" for r in collapsed)
        lines.append(
            f"WARNING: the weights collapsed for {len(collapsed)} of {len(result['rows'])} "
            f"sequences (clipped ESS: {ess}): their reweighted metrics rest on a few samples"
        )
    for r in result["rows"]:
        lines += [f"WARNING: {r['sequence']}: {w}" for w in r.get("warnings", [])]
    return "\n".join(lines)
