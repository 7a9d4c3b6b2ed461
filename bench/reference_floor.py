"""The ideal-sampler floor: the E-W2 (and T-W2) that a perfect proposal would score.

Usage: python bench/reference_floor.py EVAL_REF --truth RUN [RUN ...] [--system NAME]
       [--n-eval 10000] [--repeats 30] [--t-w2] [--target-mean 0.25 --target-sd 0.05]
       [--seeds-per-mean 3]

An ideal SNIS sampler returns conformations distributed exactly as mu. The best stand-in for such
draws is an independent, longer estimate of mu: the TRUTH runs (``arbg md`` directories or
``.npz`` references, joined by :func:`arbg.data.datasets.join_datasets`, MBAR for ``arbg md``
runs). Each repeat draws ``n_eval`` of their frames by weight (multinomial, as the published
recipe resamples proposals, ``shared/reference.md`` "Published evaluation") and scores them
against the stride-subsampled EVAL_REF exactly as ``arbg evaluate`` scores a reweighted run
(:func:`arbg.eval.ensembles.strided_reference`, :func:`arbg.eval.ensembles.resampled_score`).
What is left is the noise of the evaluation itself: of EVAL_REF's frames and of the resampling.
A model that scores near this floor cannot be told apart from a perfect one at this size.

TRUTH must not share frames with EVAL_REF (then the floor would be too low).

Prints every repeat, the mean +- sd over repeats, and how often the mean (and sd) of
``--seeds-per-mean`` such draws meets ``--target-mean`` (and ``--target-sd``): the chance that a
perfect model passes an acceptance of the form "E-W2 mean <= a with sd <= b over k seeds".
Energies are reduced (kT) under the named system's force field; angles in radians.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from arbg.data.datasets import join_datasets, load_dataset
from arbg.eval.ensembles import Ensemble, backbone_torsions, resampled_score, strided_reference
from arbg.eval.evaluate import reference_energies
from arbg.eval.w2 import energy_w2
from arbg.reweight import multinomial_resample, weights_from_log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference", type=Path, help="the evaluation reference (npz or arbg md dir)")
    ap.add_argument("--truth", type=Path, nargs="+", required=True, help="independent runs")
    ap.add_argument(
        "--system",
        help="system preset (default: the one the first truth run records; give it "
        "for .npz files, which record none)",
    )
    ap.add_argument("--n-eval", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--t-w2", action="store_true", help="also T-W2 (minutes per repeat)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-mean", type=float, default=0.25, help="E-W2 target, kT")
    ap.add_argument("--target-sd", type=float, default=0.05, help="E-W2 sd target, kT")
    ap.add_argument("--seeds-per-mean", type=int, default=3)
    args = ap.parse_args()
    if args.n_eval < 2 or args.repeats < args.seeds_per_mean or args.seeds_per_mean < 2:
        raise SystemExit("need --n-eval >= 2 and --repeats >= --seeds-per-mean >= 2")

    first = load_dataset(args.truth[0], system=args.system)
    system = first.system
    parts = [first, *(load_dataset(p, system=system) for p in args.truth[1:])]
    ref = load_dataset(args.reference, system=system)
    # one split per run: frames stay in run order, so a seed draws the same frames every time
    truth = join_datasets([replace(d, splits={"all": [0, len(d)]}) for d in parts])
    if len(ref) < args.n_eval or len(truth) < args.n_eval:
        raise SystemExit(f"--n-eval {args.n_eval} exceeds a reference's frames")

    def ensemble(d):  # energies kT, phi/psi rad
        tors = backbone_torsions(d.positions, system.phi_indices, system.psi_indices)
        return reference_energies(d, system), tors

    ref_u, ref_t = ensemble(ref)
    truth_u, truth_t = ensemble(truth)
    ref_sub = strided_reference(ref_u, ref_t, args.n_eval, ref.log_weights)
    lw = np.asarray(truth.log_weights, dtype=np.float64)
    ref_w = weights_from_log(ref.log_weights)  # zeros (equilibrium MD) give uniform weights
    print(
        f"reference {args.reference}: {len(ref)} frames, Kish ESS {ref.kish_ess():.0f}; "
        f"truth {[str(p) for p in args.truth]}: {len(truth)} frames, Kish ESS "
        f"{truth.kish_ess():.0f}; reference vs all of truth E-W2 "
        f"{energy_w2(truth_u, ref_u, weights_from_log(lw), ref_w):.3f} kT"
    )

    rng = np.random.default_rng(args.seed)
    truth_ens = Ensemble(truth_u, truth_t)
    e, t = [], []
    for r in range(args.repeats):
        if args.t_w2:  # the whole score, as arbg evaluate computes it
            s = resampled_score(truth_ens, lw, ref_sub, args.n_eval, rng)
            e.append(s["e_w2"])
            t.append(s["t_w2"])
        else:
            idx = multinomial_resample(lw, args.n_eval, rng)
            e.append(energy_w2(truth_u[idx], ref_sub.energies, None, ref_sub.weights))
        print(f"repeat {r}: E-W2 {e[-1]:.3f} kT" + (f", T-W2 {t[-1]:.3f} rad" if t else ""))
    e_arr = np.asarray(e)
    print(
        f"ideal sampler, {args.n_eval} draws x {args.repeats}: E-W2 {e_arr.mean():.3f} +- "
        f"{e_arr.std(ddof=1):.3f} kT (min {e_arr.min():.3f}, max {e_arr.max():.3f})"
        + (f"; T-W2 {np.mean(t):.3f} +- {np.std(t, ddof=1):.3f} rad" if t else "")
    )
    k = args.seeds_per_mean
    draws = np.stack([rng.choice(e_arr, k, replace=False) for _ in range(20_000)])
    mean_ok = draws.mean(1) <= args.target_mean
    both_ok = mean_ok & (draws.std(1, ddof=1) <= args.target_sd)
    print(
        f"P(mean of {k} <= {args.target_mean}) = {mean_ok.mean():.2f}; "
        f"P(mean <= {args.target_mean} and sd <= {args.target_sd}) = {both_ok.mean():.2f}"
    )


if __name__ == "__main__":
    main()
