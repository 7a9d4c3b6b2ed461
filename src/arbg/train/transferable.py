"""Training of the transferable model (:mod:`arbg.nn.conditioning`) on a corpus of sequences.

:class:`TransferableTrainer` is :class:`arbg.train.trainer.Trainer` with the data, model,
evaluation and
checkpoint hooks replaced: one global ``std_nm`` and one binning fitted over the training
sequences (each in its own gauge frame), right-padded mixed-sequence batches (sequences drawn
uniformly, then one frame of each), val NLL pooled over the val sequences. Optimizers, schedule,
EMA, checkpoints, resume and DDP are the base class's.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arbg.chem.systems import N_ATOM_TYPES, N_RESIDUE_TYPES
from arbg.nn.conditioning import (
    ConditioningConfig,
    TransferableARBG,
    check_limits,
    collate,
    encode_system,
    solvent_of,
    spec_template,
)
from arbg.nn.coordinates import Binning, Standardization, default_n_bins
from arbg.nn.model import ARBG, ModelConfig
from arbg.train.checkpoints import read_config, save_transferable_checkpoint
from arbg.train.config import TrainConfig
from arbg.train.distributed import init_distributed, locked_output
from arbg.train.trainer import Trainer

logger = logging.getLogger(__name__)


class TransferableTrainer(Trainer):
    """:class:`arbg.train.trainer.Trainer` on a :class:`arbg.data.loaders.Corpus` (train split; val
    split for
    the val NLL). Gauge frame only; ``TrainConfig.augment_rotations``, ``augment_rotors``,
    ``bond_offsets`` and ``data_weights`` are not used (corpus frames are equilibrium MD;
    ``augment_rotors``, ``bond_offsets`` and ``local_frames`` are refused).

    Parameters
    ----------
    corpus : Corpus with a non-empty ``train`` split
    out_dir, config, progress : as :class:`arbg.train.trainer.Trainer`
    conditioning : ConditioningConfig (default sizes if None)
    """

    def __init__(
        self,
        corpus: Any,
        out_dir: str | Path,
        config: TrainConfig,
        conditioning: ConditioningConfig | None = None,
        progress: bool = True,
    ) -> None:
        if config.frame != "gauge":
            raise ValueError("transferable training uses the gauge frame (frame='gauge')")
        if config.augment_rotors or config.bond_offsets or config.local_frames:
            raise ValueError(
                "--rotors, --bond-offsets and --local-frames are for single-system training, "
                "not transferable"
            )
        if config.gauge != "central":
            raise ValueError("transferable training uses the central gauge (--gauge central)")
        self.corpus = corpus
        self.cond_cfg = conditioning or ConditioningConfig()
        super().__init__(corpus, out_dir, config, progress)

    def _setup_data(self, resume: dict[str, Any] | None) -> None:
        cfg = self.cfg
        sets = self.corpus.datasets("train") if "train" in self.corpus.splits else []
        sets = [d for d in sets if len(d.split("train"))]
        if not sets:
            raise ValueError("the corpus has no training sequences with frames")
        frames = [np.asarray(d.split("train"), dtype=np.float64) for d in sets]
        systems = [d.system for d in sets]
        template = spec_template(systems)
        if resume is not None:
            stored = read_config(self.out / "last")
            self.std_nm = float(stored["standardization"]["std_nm"])
            self.binning = Binning.from_dict(stored["binning"])
        else:
            sq = sum(float(((x - x.mean(axis=1, keepdims=True)) ** 2).sum()) for x in frames)
            self.std_nm = math.sqrt(sq / sum(x.size for x in frames))
        stds = [Standardization(self.std_nm, s.n_atoms, "gauge", s.gauge_atoms) for s in systems]
        zs = [st.forward(x) for st, x in zip(stds, frames, strict=True)]  # [F_s, D_s] each
        if resume is None:  # one symmetric range over every sequence's gauge coordinates
            r = cfg.margin * max(st.atom_radius(z) for st, z in zip(stds, zs, strict=True))
            n_bins = cfg.n_bins or default_n_bins(max(s.n_atoms for s in systems))
            self.binning = Binning(int(n_bins), -r, r)
            logger.info(
                "transferable: %d training sequences, %d frames, std %.4f nm, %d bins "
                "over +-%.3f std",
                len(sets),
                sum(len(x) for x in frames),
                self.std_nm,
                n_bins,
                r,
            )
        self.encs = [encode_system(s, self.std_nm, self.binning) for s in systems]
        self.train_bins = []
        for e, z in zip(self.encs, zs, strict=True):
            b, n_clip = self.binning.encode(z)
            if n_clip:
                logger.warning(
                    "%s: %d training coordinates outside the bin range", e.system.name, n_clip
                )
            self.train_bins.append(torch.as_tensor(b).long())  # [F_s, D_s]
        self.n_frames = torch.tensor([len(b) for b in self.train_bins], dtype=torch.float64)
        self.D = float(np.mean([e.n_tokens for e in self.encs]))  # tokens/s bookkeeping
        self.std = None  # no single standardization: one gauge frame per sequence
        self.train_p, self.rotate, self.rotors = None, False, None
        root = getattr(self.corpus, "root", None)
        self.info = {
            "corpus": {
                "root": None if root is None else str(root),
                "force_field": (getattr(self.corpus, "metadata", {}) or {})
                .get("config", {})
                .get("force_field"),
                "spec": template,
                "solvent": solvent_of(template["forcefield"]),
                "temperature_k": float(template["temperature_k"]),
                "train_sequences": sorted(s.spec.sequence for s in systems),
            },
            "limits": {
                "max_residues": max(s.n_residues for s in systems),
                "max_atoms": max(s.n_atoms for s in systems),
                "residues": "".join(sorted({c for s in systems for c in s.spec.sequence})),
            },
        }

    def _maker(self) -> dict[str, Any]:
        root = getattr(self.corpus, "root", None)
        return {"command": "train-transferable", "corpus": None if root is None else str(root)}

    def _build_model(self) -> ARBG:
        lim = self.info["limits"]
        if lim["max_residues"] > self.cond_cfg.max_residues:
            raise ValueError(
                f"{lim['max_residues']} residues > conditioning capacity "
                f"{self.cond_cfg.max_residues}"
            )
        mcfg = ModelConfig.preset(
            self.cfg.preset,
            self.binning.n_bins,
            **{
                "n_atom_types": N_ATOM_TYPES,
                "n_residue_types": N_RESIDUE_TYPES,
                "max_atoms": lim["max_atoms"],
                **self.cfg.model_overrides,
            },
        )
        return TransferableARBG(mcfg, self.cond_cfg)

    def _write_checkpoint(
        self, path: Path, training: dict[str, Any], trainer_state: dict[str, Any] | None
    ) -> None:
        save_transferable_checkpoint(
            path,
            self.model,
            self.binning,
            self.std_nm,  # type: ignore[arg-type]
            self.info,
            training,
            self.ema,
            trainer_state,
        )

    def _draw_batch(self) -> Any:
        B = self.micro_batch
        seq = torch.randint(len(self.encs), (B,), generator=self.data_gen)
        u = torch.rand(B, generator=self.data_gen, dtype=torch.float64)
        frame = (u * self.n_frames[seq]).long()
        batch = collate(
            [self.encs[int(s)] for s in seq],
            [self.train_bins[int(s)][int(f)] for s, f in zip(seq, frame, strict=True)],
        )
        batch = batch.to(self.device)
        tokens = self.model.shift_right(self.model.head.tokens(batch.targets.clamp_min(0)))
        return tokens, batch

    def _batch_loss(self, drawn: Any) -> torch.Tensor:
        tokens, batch = drawn
        with torch.autocast("cuda", torch.bfloat16, enabled=self.autocast):
            _, loss = self.ddp(tokens, batch.feats, batch.targets, logits=False, **batch.kwargs())
        return loss

    def _prepare_eval(self) -> None:
        if self.rank != 0:
            return
        cfg = self.cfg
        sets = self.corpus.datasets("val") if "val" in self.corpus.splits else []
        pairs = []
        for d in sets:
            if not len(d.split("val")):
                continue
            try:  # the model cannot score a sequence beyond what it was built for
                check_limits(d.system, self.info["limits"])
            except ValueError as e:
                logger.warning("val NLL leaves out %s: %s", d.system.name, e)
                continue
            pairs.append((d.system, np.asarray(d.split("val"))))
        if not pairs:
            logger.warning("no val sequences: evaluating on the last training frames")
            pairs = [(e.system, self.encs_frames(i)) for i, e in enumerate(self.encs)]
        per = max(1, cfg.eval_frames // len(pairs))
        self.val = []
        for system, x in pairs:
            x = x[np.linspace(0, len(x) - 1, min(per, len(x))).round().astype(int)]
            enc = encode_system(system, self.std_nm, self.binning)
            z = enc.standardization.forward(x)
            bins, n_clip = self.binning.encode(z)
            if n_clip:
                logger.warning("%s: %d val coordinates outside the bin range", system.name, n_clip)
            self.val.append(
                (enc, torch.as_tensor(bins).long(), torch.as_tensor(enc.standardization.log_det(z)))
            )
        self.baselines = {
            "uniform_nll": math.log(self.binning.n_bins),
            "n_val_frames": sum(len(v[1]) for v in self.val),
            "n_val_sequences": len(self.val),
        }
        if not (self.out / "last").exists():
            self._log({"event": "baselines", **self.baselines})

    def encs_frames(self, i: int) -> np.ndarray:
        """Last tenth of the training frames of sequence ``i`` (val fallback), nm."""
        x = self.corpus.dataset(self.encs[i].system.spec.sequence).split("train")
        return np.asarray(x[-max(1, len(x) // 10) :])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Val NLL per coordinate (nats, pooled over sequences) and mean ``log q(x)`` per frame."""
        model = self.ema if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        lp_sum, n_tok, logq = 0.0, 0, []
        for enc, bins, logdet in self.val:
            for s in range(0, len(bins), self.cfg.eval_batch):
                b = bins[s : s + self.cfg.eval_batch]
                lp = model.batch_log_prob([enc] * len(b), list(b)).cpu()  # [b] float64
                lp_sum += float(lp.sum())
                n_tok += b.numel()
                logq.append(
                    lp
                    - enc.n_tokens * math.log(self.binning.width)
                    + logdet[s : s + self.cfg.eval_batch]
                )
        model.train(was_training)
        return {"val_nll": -lp_sum / max(n_tok, 1), "val_logq": float(torch.cat(logq).mean())}


def train_transferable(
    corpus: Any,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    conditioning: ConditioningConfig | None = None,
    progress: bool = True,
    wait: bool = False,
) -> Path:
    """Train (or resume) a transferable model on ``corpus``; returns ``out_dir/last``.

    ``out_dir`` is locked while training writes it (``wait``: block instead of failing)."""
    init_distributed()
    with locked_output(out_dir, wait=wait):
        return TransferableTrainer(
            corpus, out_dir, config or TrainConfig(), conditioning, progress=progress
        ).run()
