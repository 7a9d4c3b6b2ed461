"""Settings of a sampling run (`arbg sample`, :func:`arbg.sampling.runs.run_sampling`) and of a
twisted-SMC run (`arbg smc`, :func:`arbg.sampling.runs.run_smc`): one default per parameter.

The CLI makes its flags from these classes (:func:`arbg.cli.configargs.add_config_args`); the
experiments (demo, benchmark, ablations, zero-shot) build them too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from arbg import checks

__all__ = ["MAX_SEED", "SMCConfig", "SampleConfig", "batch_size_arg", "off_to_none"]


def batch_size_arg(text: str) -> int | str:
    """``--batch-size``: an integer >= 1 or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(checks.argparse_type(checks.positive_int, int)(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"got {text!r}; expected an integer >= 1 or 'auto'"
        ) from None


def off_to_none(value: str | None) -> str | None:
    """``"off"`` (the CLI's word) and None both mean "not applied"."""
    return None if value in (None, "off") else value


#: seeds are stored as int64 (samples.npz): the largest accepted
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SampleConfig:
    """One `arbg sample` run: draw ``n`` proposals with exact log q and reweight them (SNIS).

    Attributes
    ----------
    n : total number of new samples (over all ranks).
    tau : sampling temperature (logits/tau).
    seed : base seed (rank r draws with ``seed + r``); a seed already in the run is refused.
    device : where the model runs.
    batch_size : rows decoded in lock-step, or 'auto': the largest that fits the free device
        memory (KV cache + logits; capped at 1024 on the CPU).
    dtype : matrix precision of the sampler; log q is the exact density of the draws either way.
    clip_fraction : fraction of log-weights clipped (:func:`arbg.reweight.snis`).
    clip_mode : how the largest log-weights are clipped: dropped, capped or not at all.
    chirality : chirality policy (:mod:`arbg.sampling.sampler`; ``"none"`` from the API only).
    ensemble_size : size of ensemble.dcd (default: all samples).
    """

    n: int = 10_000
    tau: float = 1.0
    seed: int = 0
    device: str = field(default="cpu", metadata={"choices": ("cpu", "cuda")})
    batch_size: int | str = field(default=1024, metadata={"type": batch_size_arg})
    dtype: str = field(default="float32", metadata={"choices": ("float32", "bf16")})
    clip_fraction: float = field(default=0.002, metadata={"flag": "--clip"})
    clip_mode: str | None = field(default="drop", metadata={"choices": ("drop", "cap", "off")})
    chirality: str = field(default="zero", metadata={"choices": ("zero", "mirror")})
    ensemble_size: int | None = None

    def check(self) -> None:
        """Raise :class:`arbg.checks.ArgumentError` (a ValueError) naming the flag of a bad
        value."""
        c = checks
        c.positive_int("--n", self.n)
        c.positive_float("--tau", self.tau)
        c.int_in_range("--seed", self.seed, 0, MAX_SEED)
        c.in_range("--clip", self.clip_fraction, 0.0, 0.5, high_open=True)
        c.one_of("--clip-mode", self.clip_mode, (None, "off", "drop", "cap"))
        c.one_of("--chirality", self.chirality, ("zero", "mirror", "none"))
        c.optional(c.positive_int, "--ensemble-size", self.ensemble_size)
        if self.batch_size != "auto":
            c.positive_int("--batch-size", self.batch_size)
        c.one_of("--dtype", self.dtype, ("float32", "bf16"))
        c.device("--device", self.device)


@dataclass(frozen=True)
class SMCConfig:
    """One `arbg smc` run: ``repeats`` populations of ``n_particles`` (twisted SMC).

    Attributes
    ----------
    n_particles : particles per population.
    repeats : independent populations, combined through their evidence.
    tau : sampling temperature of the conditionals.
    seed : seeds the proposal generators and the resampling.
    resample : resampling scheme at the residue boundaries.
    ess_threshold : resample only when ESS/M falls below this (default: always).
    early_reject_kt : kill particles above min(u_k) + this at a boundary (None: never).
    chirality : kill particles with a D residue at a boundary (the target is L-peptides;
        ``--no-kill-d-residues`` keeps them).
    device : where the model runs.
    ensemble_size : frames of ensemble.dcd (default: all particles).
    """

    n_particles: int = field(default=1000, metadata={"flag": "--particles"})
    repeats: int = 1
    tau: float = 1.0
    seed: int = 0
    resample: str | None = field(
        default="systematic", metadata={"choices": ("systematic", "multinomial", "off")}
    )
    ess_threshold: float | None = None
    early_reject_kt: float | None = 100.0
    chirality: bool = field(default=True, metadata={"flag": "--kill-d-residues"})
    device: str = field(default="cpu", metadata={"choices": ("cpu", "cuda")})
    ensemble_size: int | None = None

    def check(self) -> None:
        """Raise :class:`arbg.checks.ArgumentError` naming the flag of a bad value."""
        c = checks
        c.int_in_range("--particles", self.n_particles, 2, 10**9)  # one particle: weight 1 always
        c.positive_int("--repeats", self.repeats)
        c.positive_float("--tau", self.tau)
        c.int_in_range("--seed", self.seed, 0, MAX_SEED)
        c.one_of("--resample", self.resample, (None, "off", "systematic", "multinomial"))
        c.optional(c.in_range, "--ess-threshold", self.ess_threshold, 0.0, 1.0)
        c.optional(c.positive_float, "--early-reject-kt", self.early_reject_kt)
        c.optional(c.positive_int, "--ensemble-size", self.ensemble_size)
        c.device("--device", self.device)
