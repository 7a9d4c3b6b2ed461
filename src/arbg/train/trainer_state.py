"""The :class:`arbg.train.trainer.Trainer`'s checkpoint, resume, evaluation and log helpers
(a mixin: the loop and the set-up stay in :mod:`arbg.train.trainer`)."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from arbg.files import atomic_write_text
from arbg.nn.standardize import centre_frames
from arbg.train.checkpoints import load_weights, save_checkpoint
from arbg.train.data import encode_frames, marginal_baseline, normalized_weights
from arbg.train.optim import Muon

logger = logging.getLogger(__name__)

__all__ = ["TrainerState"]


class TrainerState:
    """Checkpoints, resume state, evaluation and the JSON-lines log of a trainer; uses the
    attributes :class:`arbg.train.trainer.Trainer` sets up."""

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
                "numpy": np.random.get_state(),
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
        np.random.set_state(rng["numpy"])
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
        return out

    def _objective(self) -> float:
        """The val number that picks ``best``: weighted NLL under weighted cross-entropy."""
        if self.train_p is not None and "val_nll_weighted" in self.last_eval:
            return self.last_eval["val_nll_weighted"]
        return self.last_eval["val_nll"]

    # ---- io

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "train_log.jsonl", "a") as f:
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
        }

    def save(self, name: str = "last", with_state: bool = True) -> Path:
        """Write ``out_dir/name`` (collective under DDP: every rank must call it)."""
        state = self._trainer_state() if with_state else None
        path = self.out / name
        if self.rank == 0:
            self._write_checkpoint(path, self._summary(), state)
        return path
