"""The CLI's checked flags: a range-checked argparse type for every numeric option (one table,
keyed by flag name) and ``--wait`` on the commands that write a directory.

The library functions the CLI calls check the same values again (:mod:`arbg.checks`); the
table makes a bad value fail at parse time with exit code 2 and a message naming the flag.
"""

from __future__ import annotations

import argparse

from arbg import checks

__all__ = ["WAIT_COMMANDS", "add_wait_args", "apply_arg_checks", "arg_checks"]


def _checked(check, base: type = float, *extra):
    return checks.argparse_type(lambda name, v: check(name, v, *extra), base)


def arg_checks() -> dict[str, object]:
    """The argparse ``type`` of every numeric option, by dest: one place for the CLI's ranges
    (the library functions the CLI calls check the same values again)."""
    c = checks
    pos_int, nonneg_int = _checked(c.positive_int, int), _checked(c.nonnegative_int, int)
    pos, nonneg = _checked(c.positive_float), _checked(c.nonnegative_float)
    temperature = _checked(c.in_range, float, 0.0, 5000.0, True)
    n_bins = _checked(c.int_in_range, int, 2, 1 << 20)
    table: dict[str, object] = {}
    for dest in (
        "batch_size bias_grid bias_residues bound_frames chunk_frames cond_heads cond_layers "
        "ensemble_size frames length max_sequences md_steps_per_frame n n_eval n_mixtures "
        "n_samples particles patience repeats sample steps tica_lag tune_n tune_n_eval workers "
        "eval_batch eval_frames log_every ns_steps stop_after_steps train_steps grad_accum rounds "
        "samples_per_round steps_per_round validate_samples"
    ).split():
        table[dest] = pos_int
    for dest in ("seed", "seeds", "eval_every", "checkpoint_every", "eval_seed", "validate_every"):
        table[dest] = nonneg_int
    for dest in (
        "bias_build_ns bias_deposit_ps bias_height_kt early_reject_kt frame_interval_ps "
        "lr lr_adamw lr_muon max_minutes ns test_ns train_minutes train_ns reference_ns peak_tflops"
    ).split():
        table[dest] = pos
    for dest in ("friction", "warmup_ps", "grad_clip", "weight_decay", "min_nll_gain", "weights"):
        table[dest] = nonneg
    table.update(
        bins=n_bins,
        n_bins=n_bins,
        bias_factor=_checked(c.in_range, float, 1.0, 1e6, True),
        bias_width_deg=_checked(c.in_range, float, 0.0, 180.0, True),
        cutoff_nm=_checked(c.in_range, float, 0.0, 100.0, True),
        step_fs=_checked(c.in_range, float, 0.0, 5.0, True),
        tau=_checked(c.in_range, float, 0.0, 100.0, True),
        taus=_checked(c.in_range, float, 0.0, 100.0, True),
        temperature_k=temperature,
        md_temperature_k=temperature,
        clip=_checked(c.in_range, float, 0.0, 0.5, False, True),
        ess_threshold=_checked(c.in_range, float, 0.0, 1.0, True),
        split=_checked(c.in_range, float, 0.0, 1.0),
        clip_fraction=_checked(c.in_range, float, 0.0, 0.5, False, True),
        betas=_checked(c.in_range, float, 0.0, 1.0, False, True),
        ema_decay=_checked(c.in_range, float, 0.0, 1.0, True, True),
        margin=_checked(c.in_range, float, 1.0, 100.0),
        min_lr_frac=_checked(c.in_range, float, 0.0, 1.0),
        weight_power=_checked(c.in_range, float, 0.0, 1.0, True),
        momentum_muon=_checked(c.in_range, float, 0.0, 1.0, False, True),
        warmup_frac=_checked(c.in_range, float, 0.0, 1.0, False, True),
        reprobe_speedup=_checked(c.in_range, float, 1.0, 1000.0),
        data_fraction=_checked(c.in_range, float, 0.0, 1.0),
        min_relative_ess=_checked(c.in_range, float, 0.0, 1.0, True),
    )
    return table


def apply_arg_checks(parser: argparse.ArgumentParser) -> None:
    """Give every int/float option of ``parser`` (and its subcommands) its checked type."""
    table = arg_checks()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                apply_arg_checks(sub)
        elif action.type in (int, float):
            flag = next(o for o in action.option_strings if o.startswith("--"))
            check = table.get(flag[2:].replace("-", "_"), table.get(action.dest))
            if check is None:
                raise RuntimeError(f"no range check for numeric option {action.dest!r}")
            action.type = check


WAIT_COMMANDS = (
    "md",
    "corpus",
    "train",
    "train-transferable",
    "finetune",
    "sample",
    "smc",
    "evaluate",
    "demo",
)


def add_wait_args(sub: argparse._SubParsersAction) -> None:
    for name in WAIT_COMMANDS:
        sub.choices[name].add_argument(
            "--wait",
            action="store_true",
            help="if another process is writing the output directory, wait for it "
            "(default: stop with an error naming it)",
        )
