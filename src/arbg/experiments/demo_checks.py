"""The demo's checks of its own result: is the model trained, is the reweighted ensemble useful.

- :func:`training_verdict` compares the best validation NLL of a checkpoint with the marginal
  histogram baseline the trainer records (``training.baselines.marginal_nll``, nats/coord). A
  model whose NLL is not clearly below it (``min_gain`` nats/coord) has learnt nothing the
  per-coordinate marginals do not already give, and its samples are useless; the demo then stops
  with :class:`DemoNotTrained` instead of sampling from it.
- :func:`result_summary` reads ``metrics.json`` of the evaluation and returns the key figures and
  the flags of a result worse than the raw proposal or with an SNIS ESS below 1%.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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
    flags = []
    for label, prop, rew, _ in rows:
        if math.isfinite(prop) and not rew <= prop:
            flags.append(
                f"reweighted {label} {rew:.3g} is worse than the raw proposal's {prop:.3g}"
            )
    if not frac >= ESS_FLAG_FRACTION:
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
        f"SNIS ESS {summary['ess']:.1f} of {summary['n_proposals']} "
        f"({100 * summary['ess_fraction']:.2f}%)"
        + (f"; {unique:.0f} distinct conformations resampled" if unique is not None else "")
    )
    if summary["flags"]:
        lines += [f"WARNING: {f}" for f in summary["flags"]]
    else:
        lines.append("checks passed: reweighting improves on the proposal, ESS >= 1%")
    return lines
