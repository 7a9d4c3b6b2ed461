"""Training hyper-parameters (:class:`TrainConfig`) and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from arbg import checks

__all__ = ["TrainConfig", "lr_factor"]


@dataclass
class TrainConfig:
    """Training hyper-parameters.

    Defaults: the paper's optimizer recipe; ``steps=1600, batch_size=32`` were tuned for the
    ``tiny`` preset on aldp on one CPU core (~10 minutes, val NLL ~6.10 nats/coord against a
    marginal baseline of ~7.67). The paper trains single systems with batches of 512-1024 on a
    GPU: raise ``batch_size`` (and lower ``steps``) there.

    Attributes
    ----------
    preset : model size preset (``tiny``, ``small``, ``medium``, ``large``).
    model_overrides : extra :class:`arbg.nn.model.ModelConfig` fields (e.g. ``n_layer``).
    n_bins : bins ``L``; default :func:`arbg.nn.coordinates.default_n_bins` of the atom count.
    steps : total optimizer steps (defines the schedule).
    batch_size : global batch (frames per step, split across ranks).
    optimizer : ``"muon"`` (Muon for block matrices + AdamW for the rest) or ``"adamw"``.
    lr_adamw : peak learning rate of AdamW (every parameter with ``adamw``; with ``muon`` the
        ones Muon does not take: embeddings, norm gains, head).
    lr_muon : peak learning rate of Muon (the 2-D matrices of the blocks).
    momentum_muon : Muon's momentum.
    ns_steps : Newton-Schulz iterations of Muon's orthogonalisation.
    betas : AdamW's (beta1, beta2).
    weight_decay : AdamW's decoupled weight decay (not on norm gains).
    warmup_frac : fraction of ``steps`` of linear learning-rate warm-up.
    min_lr_frac : the cosine decay's floor, as a fraction of the peak learning rate.
    grad_clip : max global gradient norm (0 = off).
    ema : keep an exponential moving average of the weights (saved, used for eval).
    ema_decay : the average's decay per step.
    frame : ``"centroid"`` (published: centre of geometry removed, rotation augmentation) or
        ``"gauge"`` (arbg: rotation and translation fixed by three backbone atoms, no
        augmentation needed); see :mod:`arbg.nn.coordinates`.
    augment_rotations : random 3-D rotation of every training frame (centroid frame only).
    gauge : which three atoms fix the gauge frame: ``"central"`` (N, CA, C of the central
        residue, :attr:`arbg.chem.systems.PeptideSystem.gauge_atoms`) or ``"start"`` (the first
        three heavy atoms of the chain, :attr:`~arbg.chem.systems.PeptideSystem.start_gauge_atoms`:
        with ``bond_offsets`` every later heavy atom is an offset, none absolute).
    bond_offsets : model each atom's coordinates as its offset from its earlier bonded neighbour
        (:meth:`arbg.chem.systems.PeptideSystem.bond_parents`; gauge frame only, Jacobian 1, see
        :mod:`arbg.nn.coordinates`, "Bond offsets"): bond lengths and angles become local in the
        token sequence. Single-system only.
    local_frames : with ``bond_offsets``, write each offset in a frame built from its parent and
        two earlier atoms (:meth:`arbg.chem.systems.PeptideSystem.frame_refs`; a rotation per
        atom, Jacobian 1, see :mod:`arbg.nn.coordinates`, "Local frames"): bond lengths, angles
        and fixed dihedrals become the same narrow conditional in every conformation.
    augment_rotors : relabel the hydrogens of every CH3 / NH3+ group of every training frame by
        a random cyclic shift (:attr:`arbg.chem.systems.PeptideSystem.rotor_hydrogens`): an
        exact symmetry of the energy, each relabelling a 120 degree turn of the group, so the
        model sees every rotor state with every conformation of the rest (single-system only).
    bf16 : bf16 autocast (CUDA only; ignored on the CPU); the weights and optimizer state stay
        float32 (master weights).
    grad_accum : micro-batches per optimizer step (``batch_size / world`` must divide by it):
        large effective batches in bounded memory.
    compile : ``torch.compile`` the model on CUDA (falls back to eager, with a warning, if
        compilation fails); ignored on the CPU.
    fused_ce : chunked cross-entropy of the ``bins`` head (:mod:`arbg.nn.fused_ce`), never
        materialising the float32 [batch, tokens, bins] logits; None = on CUDA only (on the CPU
        memory is not the limit and recomputing the logits in the backward costs time; the CPU
        loss applies the bin floors on the floored rows only).
    peak_tflops : the device's peak dense bf16 TFLOP/s for the MFU in the log (default: a table of
        known GPUs; no MFU where unknown, e.g. on the CPU).
    seed : seed of the model init and the data stream.
    eval_every : steps between validations (0 = never).
    eval_frames : validation frames (a fixed, evenly strided subset of the val split).
    eval_batch : frames per batch of the validation pass.
    eval_seed : seed of the validation frames' fixed rotations and of the marginal baseline.
    checkpoint_every : steps between ``last`` checkpoints.
    log_every : steps between records of ``train_log.jsonl``.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
    margin : multiplicative margin of the bin range over the largest atom radius.
    max_minutes : stop gracefully (checkpoint saved) after this wall time in one invocation.
    stop_after_steps : stop gracefully after this many steps in one invocation (preemption).
    data_weights : how frame weights of a weighted dataset (biased or heated MD,
        :attr:`arbg.data.datasets.Dataset.log_weights`) enter training. ``"plain"``: every frame
        counts once, so the proposal learns the broad biased ensemble and over-covers rare
        modes; SNIS corrects the rest. ``"weighted"``: weighted cross-entropy, with minibatches
        drawn with probability proportional to the frame weights (an unbiased stochastic
        gradient of the target-ensemble cross-entropy, with lower variance than scaling
        per-frame losses); validation NLL is then weighted as well and picks ``best``.
        Ignored for unweighted data.
    weight_power : with ``data_weights="weighted"``, frames are drawn in proportion to
        ``w**weight_power``: 1 trains on the target ensemble, values in (0, 1) on a tempered
        ensemble between the sampled (biased) one and the target. A strong bias leaves few
        frames with weight (Ace-AAA-Nme's metadynamics run: Kish ESS 436 of 16,000); plain
        training then bakes the bias into every importance weight (the SNIS ESS of a perfect
        model of the biased ensemble equals the data's Kish fraction, 2.7 % there), full
        weights train on 436 effective frames, and a power of 0.25 keeps 52 % of the frames
        while a perfect model's SNIS ESS would be 17 %. Validation NLL is weighted with the
        same power and picks ``best``; the fully weighted one is logged beside it.
    patience : early stopping: stop (with ``last`` and ``best`` saved) after this many
        consecutive evaluations without a new best validation objective; None = off. Small
        single-system datasets overfit within a few epochs (aldp, 4,000 frames: best val NLL
        at ~4 epochs, then rising), so the demo uses it.
    """

    preset: str = field(default="tiny", metadata={"choices": ("tiny", "small", "medium", "large")})
    model_overrides: dict[str, Any] = field(default_factory=dict)
    n_bins: int | None = None
    steps: int = 1600
    batch_size: int = 32
    optimizer: str = field(default="muon", metadata={"choices": ("muon", "adamw")})
    lr_adamw: float = 2e-3
    lr_muon: float = 0.02
    momentum_muon: float = 0.95
    ns_steps: int = 5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.0
    grad_clip: float = 1.0
    ema: bool = False
    ema_decay: float = 0.999
    frame: str = field(default="gauge", metadata={"choices": ("gauge", "centroid")})
    augment_rotations: bool = field(default=True, metadata={"flag": "--rotations"})
    augment_rotors: bool = field(default=False, metadata={"flag": "--rotors"})
    gauge: str = field(default="central", metadata={"choices": ("central", "start")})
    bond_offsets: bool = False
    local_frames: bool = False
    bf16: bool = False
    seed: int = 0
    eval_every: int = 250
    eval_frames: int = 1000
    eval_batch: int = 250
    eval_seed: int = 1234
    checkpoint_every: int = 500
    log_every: int = 10
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    margin: float = 1.1
    max_minutes: float | None = None
    stop_after_steps: int | None = None
    data_weights: str = field(default="plain", metadata={"choices": ("plain", "weighted")})
    weight_power: float = 1.0
    patience: int | None = None
    grad_accum: int = 1
    compile: bool = True
    fused_ce: bool | None = None
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every setting (:mod:`arbg.checks`; messages name the CLI flag)."""
        c = checks
        c.one_of("--preset", self.preset, ("tiny", "small", "medium", "large"))
        c.optional(c.int_in_range, "--n-bins", self.n_bins, 2, 1 << 20)
        c.positive_int("--steps", self.steps)
        c.positive_int("--batch-size", self.batch_size)
        c.one_of("--optimizer", self.optimizer, ("muon", "adamw"))
        c.positive_float("--lr-adamw", self.lr_adamw)
        c.positive_float("--lr-muon", self.lr_muon)
        c.in_range("warmup_frac", self.warmup_frac, 0.0, 1.0, high_open=True)
        c.in_range("min_lr_frac", self.min_lr_frac, 0.0, 1.0)
        c.nonnegative_float("grad_clip", self.grad_clip)
        c.in_range("ema_decay", self.ema_decay, 0.0, 1.0, low_open=True, high_open=True)
        c.one_of("--frame", self.frame, ("gauge", "centroid"))
        if self.bond_offsets and self.frame != "gauge":
            raise c.ArgumentError("--bond-offsets needs the gauge frame (--frame gauge)")
        c.one_of("--gauge", self.gauge, ("central", "start"))
        if self.gauge != "central" and self.frame != "gauge":
            raise c.ArgumentError("--gauge start needs the gauge frame (--frame gauge)")
        if self.local_frames and not self.bond_offsets:
            raise c.ArgumentError("--local-frames needs --bond-offsets")
        c.nonnegative_int("--seed", self.seed)
        c.nonnegative_int("--eval-every", self.eval_every)
        c.positive_int("eval_frames", self.eval_frames)
        c.positive_int("eval_batch", self.eval_batch)
        c.nonnegative_int("--checkpoint-every", self.checkpoint_every)
        c.positive_int("log_every", self.log_every)
        c.in_range("margin", self.margin, 1.0, 100.0)
        c.optional(c.positive_float, "--max-minutes", self.max_minutes)
        c.optional(c.positive_int, "stop_after_steps", self.stop_after_steps)
        c.one_of("--data-weights", self.data_weights, ("plain", "weighted"))
        c.in_range("--weight-power", self.weight_power, 0.0, 1.0, low_open=True)
        if self.weight_power != 1.0 and self.data_weights != "weighted":
            raise c.ArgumentError("--weight-power needs --data-weights weighted")
        c.optional(c.positive_int, "--patience", self.patience)
        c.device("--device", self.device)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Schedule multiplier at (0-based) ``step``: linear warm-up, then cosine to ``min_lr_frac``."""
    warm = max(1, int(round(cfg.warmup_frac * cfg.steps)))
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, cfg.steps - warm))
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))
