"""MD at the energy-evaluation budget of a model's run: the baseline row of `arbg benchmark` and
`arbg zero-shot` (:func:`arbg.eval.cost.md_cost_curve` on consecutive blocks of MD)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from arbg.data.datasets import Dataset
from arbg.eval.cost import md_cost_curve
from arbg.experiments.stages import stats

logger = logging.getLogger(__name__)


def md_steps_per_frame(data: Dataset) -> int | None:
    """Integration steps per saved frame recorded by ``arbg md`` (None when unknown)."""
    meta = data.metadata
    if "frame_interval_ps" in meta and "step_fs" in meta:
        return max(1, int(round(float(meta["frame_interval_ps"]) * 1000 / float(meta["step_fs"]))))
    return None


def md_at_budget(
    data: Dataset,
    reference: Dataset,
    budget: int,
    seeds: Sequence[int],
    steps_per_frame: int,
    n_eval: int,
) -> dict[str, Any]:
    """E-W2 and T-W2 of MD that spent ``budget`` energy evaluations, one block per seed.

    Repeat ``i`` takes the ``i``-th block of ``budget // steps_per_frame`` consecutive frames of
    ``data`` (time order) and evaluates it with :func:`arbg.eval.cost.md_cost_curve` (at most
    ``n_eval`` frames per side); weighted (biased or heated) data transport their frame
    weights. Blocks with fewer than 2 frames, or beyond the data, are left out (a NaN row when
    none is left).
    """

    n_md = budget // steps_per_frame
    empty = np.zeros((0, data.system.n_atoms, 3))
    e, t, blocks = [], [], []
    for i, seed in enumerate(seeds):
        start = i * n_md
        if n_md < 2 or start + n_md > len(data):
            logger.warning(
                "MD at %d energy evaluations: block %d (%d frames from frame %d) "
                "is not available in %d frames",
                budget,
                i,
                n_md,
                start,
                len(data),
            )
            continue
        # weighted (biased/heated) MD transports its exact frame weights
        weights = {"md_log_weights": data.log_weights[start:]} if data.weighted else {}
        curve = md_cost_curve(
            data.system,
            data.positions[start:],
            steps_per_frame,
            empty,
            np.zeros(0),
            np.zeros(0),
            reference,
            [budget],
            n_max=n_eval,
            seed=seed,
            **weights,
        )
        e.append(curve["md"]["e_w2"][0])
        t.append(curve["md"]["t_w2"][0])
        blocks.append([start, start + n_md])
    if data.weighted:
        logger.info(
            "MD at %d energy evaluations: weighted training MD, its frame weights are transported",
            budget,
        )
    return {
        "budget": int(budget),
        "steps_per_frame": int(steps_per_frame),
        "n_frames": int(n_md),
        "blocks": blocks,
        "e_w2": stats(e),
        "t_w2": stats(t),
    }
