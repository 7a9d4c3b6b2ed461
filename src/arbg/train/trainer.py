"""Training of the ARBG model: teacher-forced cross-entropy on binned, standardized coordinates.

Recipe (the paper, ``docs/references.md`` Sec. E.1, and ``docs/references.md``):
Muon (lr 0.02, Nesterov momentum 0.95, 5 Newton-Schulz steps) for the 2-D weight matrices of the
transformer blocks, AdamW (lr 2e-3, betas 0.9/0.999) for embeddings, output head and norms,
weight decay 0.01, cosine schedule with 5% linear warm-up, gradient clipping, optional EMA and
optional bf16 autocast on a GPU.

Data: standardization (centre of geometry, one scalar std) and binning (symmetric range covering
the largest atom distance from the centre times a margin) are fitted on the *training* split.
Each step draws a random batch of training frames (with replacement, from a seeded generator per
rank, whose state is the data position), rotates each centred frame by a uniform random rotation,
standardizes and bins it; inputs are ``shift_right(bins)``.

Validation (rank 0): a fixed subset of the val split, randomly rotated with a fixed seed so
numbers are comparable between evaluations and runs, scored as NLL per coordinate (nats) and as
the exact continuous log-likelihood per frame ``log q(x) = sum log p - D log(width) +
log_det_forward`` (nats, density of the centred conformation in nm). Two baselines are reported at
the start: uniform bins (``log L`` per coordinate) and a per-coordinate marginal histogram of the
(augmented) training data with add-one smoothing.

Output directory::

    out_dir/last/          checkpoint with trainer_state.pt (resume point; written every
                           ``checkpoint_every`` steps and at the end or on a graceful stop)
    out_dir/best/          checkpoint with the lowest val NLL so far (no trainer state)
    out_dir/train_log.jsonl  JSON lines: training records (step, loss, lr, tokens_per_s, wall_s)
                           and evaluation records (step, val_nll, val_logq, ...), appended

Running :func:`train` again on the same ``out_dir`` resumes from ``last`` (optimizer, schedule,
step, RNG and data position), and reaches the same weights as an uninterrupted run.

Distributed: under ``torchrun`` (or any initialised ``torch.distributed`` group) the model is
wrapped in DistributedDataParallel; ``batch_size`` is the *global* batch, split across ranks;
each rank draws its own data (seed depends on the rank); gradients are averaged by DDP, so every
rank takes the identical AdamW/Muon step. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from arbg.chem.systems import N_ATOM_TYPES, N_RESIDUE_TYPES
from arbg.data.datasets import Dataset
from arbg.files import atomic_write_text, claim_dir, disk_errors
from arbg.nn.conditioning import system_features
from arbg.nn.coordinates import (
    Binning,
    Standardization,
    centre_frames,
    default_n_bins,
    fit_binning,
    fit_standardization,
)
from arbg.nn.model import ARBG, ModelConfig
from arbg.runtime import Interrupted, StopRequest, stop_signals
from arbg.train.checkpoints import (
    copy_checkpoint,
    load_trainer_state,
    load_weights,
    read_config,
    save_checkpoint,
)
from arbg.train.config import TrainConfig, lr_factor
from arbg.train.distributed import init_distributed, locked_output, rank_and_world_size
from arbg.train.encoding import (
    encode_frames,
    encode_values,
    marginal_baseline,
    normalized_weights,
    relabel_rotors,
)
from arbg.train.optim import (
    Muon,
    build_optimizers,
    model_flops_per_token,
    peak_flops,
)

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "train"]


class Trainer:
    """Training loop state (see the module docstring); :func:`train` is the usual entry point.

    Parameters
    ----------
    dataset : Dataset with ``train`` and ``val`` splits.
    out_dir : directory for checkpoints and the log (resumed from ``out_dir/last``).
    config : TrainConfig
    progress : show a tqdm progress bar (rank 0).
    """

    def __init__(
        self, dataset: Dataset, out_dir: str | Path, config: TrainConfig, progress: bool = True
    ) -> None:
        self.cfg = cfg = config
        cfg.validate()  # fields may have been set after construction
        self.out = Path(out_dir)
        self.dataset, self.system = dataset, getattr(dataset, "system", None)
        self.progress = progress
        self.rank, self.world = rank_and_world_size()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} not divisible by {self.world} ranks")
        self.local_batch = cfg.batch_size // self.world
        if cfg.grad_accum < 1 or self.local_batch % cfg.grad_accum:
            raise ValueError(
                f"grad_accum {cfg.grad_accum} must divide the per-rank batch {self.local_batch}"
            )
        self.micro_batch = self.local_batch // cfg.grad_accum
        dev = cfg.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev == "cuda" and self.world > 1:
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', self.rank))}"
        self.device = torch.device(dev)
        self.autocast = cfg.bf16 and self.device.type == "cuda"

        resume = load_trainer_state(self.out / "last")
        if resume is not None:
            self._check_resume(resume)
        if self.rank == 0:
            claim_dir(self.out, self._maker())
        if resume is None and self.rank == 0:  # a fresh start: records of a crashed one go
            (self.out / "train_log.jsonl").unlink(missing_ok=True)
        self._setup_data(resume)  # standardization, binning, training frames, self.D
        torch.manual_seed(cfg.seed)  # identical init on every rank
        self.model = self._build_model()
        # targets: bins, or exact bin-unit values for a continuous head (arbg.nn.heads)
        self._encode = encode_values if self.model.head.continuous else encode_frames
        self.model.to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if cfg.ema else None
        self.optimizers = build_optimizers(self.model, cfg)
        self.ddp: torch.nn.Module = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            import inspect

            # buffers are constant (token features, rotary tables): no per-forward syncing
            sync = (
                "forward_sync_buffers"
                if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else "broadcast_buffers"
            )
            self.ddp = DDP(self.model, device_ids=ids, **{sync: False})
        self._eager_ddp = self.ddp
        if cfg.compile and self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the float32 matrix work
            self.ddp = torch.compile(self.ddp)
        fused = cfg.fused_ce if cfg.fused_ce is not None else self.device.type == "cuda"
        self.model.chunked_ce = bool(fused)
        self.flops_per_token = model_flops_per_token(self.model, self.D)
        self.peak_flops = peak_flops(self.device, cfg.peak_tflops)
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * self.rank + 1)
        self.step = 0
        self.best_val = math.inf
        self.evals_since_best = 0
        self.early_stopped = False
        self.last_eval: dict[str, float] = {}
        self.baselines: dict[str, float] = {}
        self.n_clipped = 0
        if resume is not None:
            self._restore(resume)
        self._prepare_eval()

    # ---- set-up hooks (overridden by arbg.train.transferable.TransferableTrainer)

    def _data_identity(self) -> dict[str, Any] | None:
        """What the model is trained on (:meth:`arbg.data.datasets.Dataset.identity`), recorded
        in the checkpoint's training record and compared on resume."""
        ident = getattr(self.dataset, "identity", None)
        return ident() if callable(ident) else None

    def _maker(self) -> dict[str, Any]:
        """The maker record of the training directory (:func:`arbg.files.claim_dir`)."""
        data = self._data_identity() or {}
        return {
            "command": "train",
            "system": self.system.name,
            "n_atoms": int(self.system.n_atoms),
            "data": data.get("sha256"),
        }

    def _check_resume(self, state: dict[str, Any]) -> None:
        """Refuse, in one line naming the option, to resume ``out_dir/last`` with another
        molecule, another model (``--preset``, ``--head``), other tokens (``--frame``,
        ``--gauge``, ``--bond-offsets``, ``--local-frames``, ``--n-bins``) or other data."""
        last = self.out / "last"
        stored = read_config(last)
        where = f"--out {str(self.out)!r}"
        rec = stored.get("system")
        if isinstance(rec, dict) and self.system is not None:
            name = rec.get("spec", {}).get("name")
            if rec.get("n_atoms") != self.system.n_atoms or list(rec.get("atom_names", [])) != list(
                self.system.atom_names
            ):
                raise ValueError(
                    f"data: {where} holds a model of {name!r} ({rec.get('n_atoms')} atoms), the "
                    f"data are {self.system.name!r} ({self.system.n_atoms} atoms); train another "
                    "molecule in a new --out"
                )
        old = state.get("train_config", {})
        flags = {
            "preset": "--preset",
            "model_overrides": "--head / --n-mixtures",
            # the stored standardization and bins are kept on resume: a changed one is refused
            "frame": "--frame",
            "gauge": "--gauge",
            "bond_offsets": "--bond-offsets",
            "local_frames": "--local-frames",
            "n_bins": "--n-bins",
        }
        for key, flag in flags.items():
            new = self.cfg.to_dict().get(key)
            if key in old and old[key] != new:
                raise ValueError(
                    f"{flag}: {where} was trained with {key} {old[key]!r}, not {new!r}; resume "
                    "with the same value or train in a new --out"
                )
        was, now = stored.get("training", {}).get("data"), self._data_identity()
        if (
            was
            and now
            and (was.get("sha256"), was.get("n_frames"))
            != (
                now["sha256"],
                now["n_frames"],
            )
        ):
            raise ValueError(
                f"data: {where} was trained on {was.get('source') or 'other data'} "
                f"({was.get('n_frames')} frames), not {now.get('source') or 'these data'} "
                f"({now['n_frames']} frames, other content); its standardization and bins fit "
                "those data: resume with them or train in a new --out"
            )

    def _setup_data(self, resume: dict[str, Any] | None) -> None:
        """Training frames, standardization and binning (fitted, or restored from ``last``)."""
        cfg, dataset = self.cfg, self.dataset
        train = dataset.split("train")
        if len(train) == 0:
            raise ValueError("the dataset has no training frames")
        self.train_x = torch.as_tensor(centre_frames(train))  # [F, n, 3] float64 nm
        if cfg.data_weights not in ("plain", "weighted"):
            raise ValueError(
                f"data_weights must be 'plain' or 'weighted', not {cfg.data_weights!r}"
            )
        # frame sampling probabilities of weighted cross-entropy (None: uniform)
        self.train_p: torch.Tensor | None = None
        if dataset.weighted and cfg.data_weights == "weighted":
            power = cfg.weight_power  # 1: target ensemble; (0, 1): tempered towards the sampled one
            self.train_p = torch.as_tensor(
                normalized_weights(power * dataset.split_log_weights("train"))
            )
            logger.info(
                "weighted cross-entropy (weights to the power %g): Kish ESS of the training "
                "frames %.0f / %d",
                power,
                1.0 / float((self.train_p**2).sum()),
                len(self.train_p),
            )
        elif dataset.weighted:
            kish = dataset.kish_ess("train")
            n_train = len(dataset.split("train"))
            logger.info(
                "weighted dataset trained plain (data_weights='plain'): the proposal learns the "
                "sampled ensemble; SNIS corrects towards the target. Kish ESS of the training "
                "frames %.0f / %d: a perfect model of the sampled ensemble would reach a SNIS "
                "relative ESS of about %.1f %% (--data-weights weighted --weight-power < 1 "
                "trades frames for a higher ceiling)",
                kish,
                n_train,
                100 * kish / max(1, n_train),
            )
        if resume is not None:
            stored = read_config(self.out / "last")
            self.std = Standardization.from_dict(stored["standardization"])
            self.binning = Binning.from_dict(stored["binning"])
        else:
            gauge = self.system.gauge_atoms_at(cfg.gauge) if cfg.frame == "gauge" else None
            parents = self.system.bond_parents(gauge) if cfg.bond_offsets else None
            refs = self.system.frame_refs(gauge) if cfg.local_frames else None
            self.std = fit_standardization(
                train, frame=cfg.frame, gauge_atoms=gauge, parents=parents, frame_refs=refs
            )
            n_bins = cfg.n_bins or default_n_bins(self.system.n_atoms)
            z = self.std.forward(train)  # [F, D]
            self.binning = fit_binning(
                z, n_bins, self.system.n_atoms, margin=cfg.margin, standardization=self.std
            )
        # rotations are a no-op in the gauge frame (forward removes them): skip the work
        self.rotate = cfg.augment_rotations and self.std.frame == "centroid"
        self.rotors: torch.Tensor | None = None
        if cfg.augment_rotors:
            self.rotors = torch.as_tensor(self.system.rotor_hydrogens)
            logger.info("rotor relabelling: %d CH3/NH3+ groups", len(self.rotors))
        self._fixed_bins: torch.Tensor | None = None
        self.D = self.std.n_coords

    def _build_model(self) -> ARBG:
        """The model (on the CPU) for the fitted standardization and binning."""
        cfg = self.cfg
        mcfg = ModelConfig.preset(
            cfg.preset,
            self.binning.n_bins,
            **{
                "n_atom_types": N_ATOM_TYPES,
                "n_residue_types": N_RESIDUE_TYPES,
                "max_atoms": max(256, self.system.n_atoms),
                **cfg.model_overrides,
            },
        )
        model = ARBG(mcfg, default_feats=system_features(self.system, self.std))
        model.set_bin_floor(self.binning.token_floor(self.std))
        return model

    # ---- loop

    def train_step(self) -> float:
        """One optimizer step (``grad_accum`` micro-batches); returns the (local) loss."""
        f = lr_factor(self.step, self.cfg)
        for o in self.optimizers:
            for g in o.param_groups:
                g["lr"] = g["base_lr"] * f
        loss = self.accumulate_gradients()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        for o in self.optimizers:
            o.step()
            o.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                    pe.lerp_(p, 1.0 - self.cfg.ema_decay)
        self.step += 1
        return loss

    def accumulate_gradients(self) -> float:
        """Backward of ``grad_accum`` micro-batches (gradients summed into ``.grad``, DDP syncing
        only the last); returns the mean loss."""
        n = self.cfg.grad_accum
        total = torch.zeros((), device=self.device)
        for i in range(n):
            sync = i == n - 1 or self.world == 1
            ctx = contextlib.nullcontext() if sync else self._eager_ddp.no_sync()
            with ctx:
                loss = self._micro_loss() / n
                loss.backward()
            total += loss.detach()
        return float(total)  # one host sync per optimizer step

    def _micro_loss(self) -> torch.Tensor:
        """The loss of the next micro-batch; a failing ``torch.compile`` falls back to the eager
        model once, on the same micro-batch (the data stream stays that of an eager run)."""
        batch = self._draw_batch()
        try:
            return self._batch_loss(batch)
        except Exception as err:  # noqa: BLE001  (compiler errors have no common type)
            if self.ddp is self._eager_ddp:
                raise
            logger.warning("torch.compile failed (%s); training eagerly", err)
            self.ddp = self._eager_ddp
            return self._batch_loss(batch)

    def _draw_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch (from ``data_gen``): model inputs and targets on the device."""
        B = self.micro_batch
        if self.train_p is None:
            pick = torch.randint(len(self.train_x), (B,), generator=self.data_gen)
        else:  # weighted cross-entropy: frames drawn in proportion to their weights
            pick = torch.multinomial(self.train_p, B, replacement=True, generator=self.data_gen)
        if self.rotate or self.rotors is not None:
            x = self.train_x[pick]  # [B, n, 3] float64 nm, centred
            if self.rotors is not None:
                x = relabel_rotors(x, self.rotors, self.data_gen)
            rotations = self.data_gen if self.rotate else None
            bins, n_clip = self._encode(x, self.std, self.binning, rotations)
            self.n_clipped += n_clip
            if self.device.type == "cuda":
                bins = bins.pin_memory()
            bins = bins.to(self.device, non_blocking=True)
        else:  # fixed frames: encoded once, kept on the device
            if self._fixed_bins is None:
                fixed, n_clip = self._encode(self.train_x, self.std, self.binning, None)
                if n_clip:
                    logger.warning("%d training coordinates fall outside the bin range", n_clip)
                self._fixed_bins = fixed.to(self.device)
            bins = self._fixed_bins[pick.to(self.device)]
        return self.model.shift_right(self.model.head.tokens(bins)), bins

    def _batch_loss(self, batch: Any) -> torch.Tensor:
        """The loss (with grad) of a micro-batch of :meth:`_draw_batch`."""
        tokens, bins = batch
        with torch.autocast("cuda", torch.bfloat16, enabled=self.autocast):
            _, loss = self.ddp(tokens, None, bins, logits=False)
        return loss

    def _should_stop(self, t0: float, steps_done: int, request: StopRequest | None = None) -> bool:
        cfg = self.cfg
        stop = cfg.stop_after_steps is not None and steps_done >= cfg.stop_after_steps
        signalled = request is not None and request.signum is not None
        if cfg.max_minutes is not None and (time.time() - t0) / 60 >= cfg.max_minutes:
            stop = True
        if cfg.patience is not None and self.evals_since_best >= cfg.patience:
            if not self.early_stopped:
                logger.info(
                    "early stop at step %d: no better val objective in %d evaluations",
                    self.step,
                    self.evals_since_best,
                )
            self.early_stopped = stop = True
        # rank 0's clock and evaluations decide; a stop signal on any rank stops every rank
        if self.world > 1:
            own = float(stop) if self.rank == 0 else 0.0
            flag = torch.tensor([own, float(signalled)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.max().item())
        return stop or signalled

    def _eval_and_best(self) -> None:
        if self.rank == 0:
            self.last_eval = self.evaluate()
            rec = {
                "event": "eval",
                "step": self.step,
                **self.last_eval,
                "wall_s": time.time() - self._t_start,
            }
            self._log(rec)
            logger.info(
                "step %d: val NLL %.4f nats/coord, val log q %.2f nats/frame",
                self.step,
                self.last_eval["val_nll"],
                self.last_eval["val_logq"],
            )
            if self._objective() < self.best_val:
                self.best_val = self._objective()
                self.evals_since_best = 0
                self._write_checkpoint(self.out / "best", self._summary(), None)
            else:
                self.evals_since_best += 1

    def run(self) -> Path:
        """Train until ``steps`` (or a graceful stop); returns ``out_dir/last``.

        SIGTERM (a batch scheduler's stop) or a first Ctrl-C end the step in progress, save
        ``last`` like a graceful stop, then raise :class:`arbg.runtime.Interrupted`.
        """
        with stop_signals() as request:
            last = self._run(request)
        if request.signum is not None:
            raise Interrupted(
                f"stopped by {request.name} at step {self.step}; checkpoint saved: {last} "
                "(run the same command again to resume)",
                request.signum,
            )
        return last

    def _run(self, request: StopRequest) -> Path:
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._t_start = t0 = time.time()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not self.progress or self.rank,
            dynamic_ncols=True,
            desc="train",
        )
        self.model.train()
        done, t_win, n_win, loss_win = 0, time.time(), 0, []
        last_saved = last_eval = self.step if self.step else -1
        while self.step < cfg.steps and not self.early_stopped:
            loss = self.train_step()
            done += 1
            n_win += 1
            loss_win.append(loss)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                dt = time.time() - t_win
                tps = n_win * cfg.batch_size * self.D / max(dt, 1e-9)
                flops = tps * self.flops_per_token  # model FLOP/s of all ranks
                lr = self.optimizers[0].param_groups[0]["lr"]
                mean_loss = float(np.mean(loss_win))
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")
                self._log(
                    {
                        "event": "train",
                        "step": self.step,
                        "loss": mean_loss,
                        "lr": lr,
                        "lr_factor": lr_factor(self.step - 1, cfg),
                        "tokens_per_s": tps,
                        "model_flops_per_token": self.flops_per_token,
                        "mfu": (
                            flops / (self.peak_flops * self.world) if self.peak_flops else None
                        ),
                        "wall_s": time.time() - t0,
                    }
                )
                t_win, n_win, loss_win = time.time(), 0, []
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self._eval_and_best()
                last_eval = self.step
            stop = self._should_stop(t0, done, request)
            if (
                cfg.checkpoint_every
                and self.step % cfg.checkpoint_every == 0
                and not stop
                and self.step < cfg.steps
            ):
                self.save("last")
                last_saved = self.step
            if stop:
                logger.info("stopping at step %d (time or step budget, or a signal)", self.step)
                break
        bar.close()
        if last_eval != self.step:
            self._eval_and_best()
        if last_saved != self.step or not (self.out / "last").exists():
            self.save("last")
        if self.rank == 0 and not (self.out / "best").exists():
            copy_checkpoint(self.out / "last", self.out / "best")
        return self.out / "last"

    # ---- checkpoints

    def _write_checkpoint(
        self, path: Path, training: dict[str, Any], trainer_state: dict[str, Any] | None
    ) -> None:
        """Write one checkpoint directory (rank 0 only)."""
        save_checkpoint(
            path,
            self.model,
            self.binning,
            self.std,
            self.system,
            training=training,
            ema_model=self.ema,
            trainer_state=trainer_state,
        )

    # ---- state

    def _trainer_state(self) -> dict[str, Any]:
        gens = [self.data_gen.get_state()]
        if self.world > 1:
            gens = [None] * self.world  # type: ignore[list-item]
            dist.all_gather_object(gens, self.data_gen.get_state())
        return {
            "step": self.step,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "data_generators": gens,
            "world_size": self.world,
            "best_val": self.best_val,
            "evals_since_best": self.evals_since_best,
            "early_stopped": self.early_stopped,
            "n_clipped": self.n_clipped,
            "train_config": self.cfg.to_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                # as tensors and plain numbers: trainer_state.pt loads with weights_only=True
                "numpy": _numpy_state_as_tensors(np.random.get_state()),
                "python": random.getstate(),
            },
        }

    def _restore(self, st: dict[str, Any]) -> None:
        last = self.out / "last"
        self.model.load_state_dict(load_weights(last, "model.safetensors"))
        if self.ema is not None:
            ema_file = last / "ema.safetensors"
            src = ema_file if ema_file.exists() else last / "model.safetensors"
            self.ema.load_state_dict(load_weights(last, src.name))
        for o, s in zip(self.optimizers, st["optimizers"], strict=True):
            o.load_state_dict(s)
        for o in self.optimizers:  # base_lr is config, not state
            for g, base in zip(o.param_groups, self._base_lrs(o), strict=True):
                g["base_lr"] = base
        gens = st["data_generators"]
        if len(gens) == self.world:
            self.data_gen.set_state(gens[self.rank])
        else:
            logger.warning(
                "resuming %d ranks from a %d-rank run: data streams reseeded", self.world, len(gens)
            )
            seed = self.cfg.seed * 1_000_003 + 7919 * self.rank + 17 + int(st["step"])
            self.data_gen.manual_seed(seed)
        self.step = int(st["step"])
        self._truncate_log()
        self.best_val = float(st["best_val"])
        self.evals_since_best = int(st.get("evals_since_best", 0))
        self.early_stopped = bool(st.get("early_stopped", False))
        self.n_clipped = int(st.get("n_clipped", 0))
        rng = st["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
        random.setstate(rng["python"])
        old = st.get("train_config", {})
        changed = {
            k: (old.get(k), v)
            for k, v in self.cfg.to_dict().items()
            if k in old and old[k] != v and k not in ("max_minutes", "stop_after_steps")
        }
        if changed:
            logger.warning("resuming with changed settings (old, new): %s", changed)
        logger.info("resumed from %s at step %d", last, self.step)

    def _base_lrs(self, opt: torch.optim.Optimizer) -> list[float]:
        if isinstance(opt, Muon):
            return [self.cfg.lr_muon] * len(opt.param_groups)
        return [self.cfg.lr_adamw] * len(opt.param_groups)

    # ---- evaluation

    def _prepare_eval(self) -> None:
        """Fixed, rotated val set and the two baselines (rank 0 only)."""
        if self.rank != 0:
            return
        cfg = self.cfg
        val = self.dataset.split("val")
        if len(val) == 0:
            logger.warning("no val frames: evaluating on the last training frames")
            val = self.dataset.split("train")[-max(1, len(self.train_x) // 10) :]
        idx = np.linspace(0, len(val) - 1, min(cfg.eval_frames, len(val))).round().astype(int)
        g = torch.Generator().manual_seed(cfg.eval_seed)
        xv = torch.as_tensor(centre_frames(val[idx]))
        val_lw = (
            self.dataset.split_log_weights("val")[idx]
            if len(self.dataset.split("val"))
            else np.zeros(len(idx))
        )
        self.val_w = torch.as_tensor(normalized_weights(val_lw)) if self.dataset.weighted else None
        # the tempered val weights of weighted cross-entropy with weight_power < 1
        self.val_w_tempered = (
            torch.as_tensor(normalized_weights(cfg.weight_power * val_lw))
            if self.dataset.weighted and cfg.weight_power != 1.0
            else None
        )
        self.val_bins, n_clip = self._encode(xv, self.std, self.binning, g if self.rotate else None)
        # conformation-dependent Jacobian (gauge frame); rotation invariant, so unrotated frames
        self.val_logdet = torch.as_tensor(
            np.broadcast_to(self.std.log_det(self.std.forward(xv.numpy())), (len(xv),)).copy()
        )
        if n_clip:
            logger.warning("%d val coordinates fall outside the bin range", n_clip)
        # marginal histogram of the augmented training data (enough rotated copies)
        passes = min(50, max(1, -(-200_000 // len(self.train_x))))
        if not self.rotate:
            passes = 1
        gm = torch.Generator().manual_seed(cfg.eval_seed + 1)
        parts = [
            encode_frames(self.train_x, self.std, self.binning, gm if self.rotate else None)[0]
            for _ in range(passes)
        ]
        L = self.binning.n_bins
        self.baselines = {
            "uniform_nll": math.log(L),
            "marginal_nll": marginal_baseline(
                torch.cat(parts), self.model.head.tokens(self.val_bins), L
            ),
            "n_val_frames": int(len(idx)),
        }
        logger.info(
            "baselines (nats/coord on %d val frames): uniform %.4f, marginal histogram %.4f",
            len(idx),
            self.baselines["uniform_nll"],
            self.baselines["marginal_nll"],
        )
        if (self.out / "last").exists():
            return
        self._log({"event": "baselines", **self.baselines})

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Val NLL per coordinate (nats) and mean exact ``log q(x)`` per frame (nats, nm)."""
        model = self.ema if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        logp = []
        for s in range(0, len(self.val_bins), self.cfg.eval_batch):
            bins = self.val_bins[s : s + self.cfg.eval_batch].to(self.device)
            with torch.autocast("cuda", torch.bfloat16, enabled=self.autocast):
                logp.append(model.log_prob(bins).cpu())  # [b] float64
        model.train(was_training)
        lp = torch.cat(logp)  # [V]
        logq = lp - self.D * math.log(self.binning.width) + self.val_logdet
        out = {"val_nll": float(-lp.mean() / self.D), "val_logq": float(logq.mean())}
        if self.val_w is not None:  # target-ensemble (weighted) versions
            out["val_nll_weighted"] = float(-(self.val_w * lp).sum() / self.D)
            out["val_logq_weighted"] = float((self.val_w * logq).sum())
        if self.val_w_tempered is not None:
            out["val_nll_tempered"] = float(-(self.val_w_tempered * lp).sum() / self.D)
        return out

    def _objective(self) -> float:
        """The val number that picks ``best``: the val NLL weighted as the training frames are."""
        if self.train_p is not None and "val_nll_tempered" in self.last_eval:
            return self.last_eval["val_nll_tempered"]
        if self.train_p is not None and "val_nll_weighted" in self.last_eval:
            return self.last_eval["val_nll_weighted"]
        return self.last_eval["val_nll"]

    # ---- io

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "train_log.jsonl"
        with disk_errors(path), open(path, "a") as f:  # a full disk names the file
            f.write(json.dumps(record) + "\n")

    def _truncate_log(self) -> None:
        """Drop log records past the resumed step (written after ``last`` before a crash)."""
        path = self.out / "train_log.jsonl"
        if self.rank != 0 or not path.exists():
            return
        keep, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a crash
                dropped += 1
                continue
            if int(rec.get("step", 0)) > self.step:
                dropped += 1
            else:
                keep.append(line)
        if dropped:
            logger.info("train_log.jsonl: dropped %d records past step %d", dropped, self.step)
            atomic_write_text(path, "".join(line + "\n" for line in keep))

    def _summary(self) -> dict[str, Any]:
        return {
            "step": self.step,
            **self.last_eval,
            "best_val_nll": self.best_val,
            "early_stopped": self.early_stopped,
            "baselines": self.baselines,
            "n_clipped_train": self.n_clipped,
            "world_size": self.world,
            "train_config": self.cfg.to_dict(),
            "data": self._data_identity(),
        }

    def save(self, name: str = "last", with_state: bool = True) -> Path:
        """Write ``out_dir/name`` (collective under DDP: every rank must call it)."""
        state = self._trainer_state() if with_state else None
        path = self.out / name
        if self.rank == 0:
            self._write_checkpoint(path, self._summary(), state)
        return path


def train(
    dataset: Dataset,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    progress: bool = True,
    wait: bool = False,
) -> Path:
    """Train (or resume) an ARBG model on ``dataset``; returns the final checkpoint directory.

    Parameters
    ----------
    dataset : Dataset with ``train`` and ``val`` splits (positions in nm).
    out_dir : output directory (module docstring); an existing ``out_dir/last`` with a trainer
        state is resumed.
    config : TrainConfig (defaults if None).
    progress : tqdm progress bar on rank 0.
    wait : wait for another process writing ``out_dir`` instead of failing.

    Returns
    -------
    Path of ``out_dir/last`` (``out_dir/best`` holds the lowest val NLL).
    """
    init_distributed()
    with locked_output(out_dir, wait=wait):
        return Trainer(dataset, out_dir, config or TrainConfig(), progress=progress).run()


def _numpy_state_as_tensors(state: tuple) -> tuple:
    """``numpy.random.get_state()`` with its key array as a tensor (loadable with
    ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = state
    return (
        str(name),
        torch.from_numpy(np.asarray(keys).copy()),
        int(pos),
        int(has_gauss),
        float(cached),
    )
