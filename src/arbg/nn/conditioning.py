"""Transferable ARBG (ROBIN, paper Sec. 4.2 and E.2): one model for many peptide sequences.

Conditioning
------------
Every atom of a sequence is described by its atom type, residue type, residue position (0-based),
the sequence length (residues) and its index inside its residue block. A small *bidirectional*
(non-causal) transformer, :class:`ConditioningEncoder`, runs over the atoms of the sequence;
token ``j`` of the decoder (a coordinate of atom ``a(j)``) gets the encoder output of ``a(j)``
added to its input embedding (``ARBG.forward(..., extra=...)``). The encoder depends on the
sequence only, so a sampler computes it once per sequence (:class:`BoundModel` caches it) and
reuses it for every token and every batch row. The per-token features of the single-system model
(axis, atom index, atom type, residue type, residue index) are kept.

Padding
-------
A batch mixes sequences of different lengths by *right* padding: tokens, features and floors are
padded after the last real token, targets with ``-1`` (ignored by the loss and by
:meth:`TransferableARBG.log_prob`), atoms with a mask. Causal attention never lets a real token
see a later (padded) one, and the encoder masks padded atoms as keys, so a padded position never
changes the likelihood of a real one.

Preprocessing
-------------
Each sequence is put in its own gauge frame (N, CA, C of its central residue,
:mod:`arbg.nn.coordinates`); one global scale ``std_nm`` (root mean square of the centred training
coordinates pooled over all training sequences) and one :class:`arbg.nn.coordinates.Binning`
(symmetric, ``margin`` times the largest absolute gauge coordinate over all training sequences)
are shared by all sequences, so ``log q(x) = sum log p - D log(width) + log J(z)`` holds per
sequence exactly as for a single system.

Training (:class:`arbg.train.transferable.TransferableTrainer`) reuses
:class:`arbg.train.trainer.Trainer` (optimizers, schedule, EMA, checkpoints, resume, DDP); a step
draws
sequences uniformly, then a frame of each.
Checkpoints carry ``"transferable": true``, the conditioning config, the force-field template of
the corpus (force field, solvent, temperature, termini) and the limits (max residues, max atoms,
residue letters seen); :func:`arbg.train.checkpoints.load_checkpoint` with ``sequence=`` builds the
peptide with that template and binds the model to it
(:func:`arbg.train.checkpoints.load_transferable`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from arbg.chem.systems import N_ATOM_TYPES, N_RESIDUE_TYPES, PeptideSystem
from arbg.nn.coordinates import Binning, Standardization
from arbg.nn.model import ARBG, ModelConfig, TokenFeatures, token_features_for_system

logger = logging.getLogger(__name__)

ATOM_FIELDS = ("atom_type", "residue_type", "residue_pos", "seq_len", "atom_in_residue")
TEMPLATE_KEYS = ("capped", "forcefield", "nonbonded", "cutoff_nm", "temperature_k", "histidine")


@dataclass
class ConditioningConfig:
    """Size of the conditioning encoder and of its vocabularies.

    Attributes
    ----------
    n_layer, n_head, head_dim : depth and attention shape of the bidirectional encoder (its
        channel width is the decoder's ``n_embd``).
    max_residues : capacity of the residue-position and sequence-length embeddings.
    max_residue_atoms : capacity of the atom-index-within-residue embedding (caps included).
    n_atom_types, n_residue_types : vocabulary sizes (:mod:`arbg.chem.residues`).
    """

    n_layer: int = 2
    n_head: int = 4
    head_dim: int = 32
    max_residues: int = 16
    max_residue_atoms: int = 48
    n_atom_types: int = N_ATOM_TYPES
    n_residue_types: int = N_RESIDUE_TYPES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConditioningConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


# --------------------------------------------------------------------------------------------------
# per-atom conditioning


def atom_conditioning(system: PeptideSystem) -> dict[str, np.ndarray]:
    """Per-atom conditioning of a system: :data:`ATOM_FIELDS` -> int64 arrays [n]."""
    n = system.n_atoms
    res = np.asarray(system.residue_index, dtype=np.int64)
    start = np.array([s for s, _ in system.residue_blocks], dtype=np.int64)
    return {
        "atom_type": np.asarray(system.atom_type_id, dtype=np.int64),
        "residue_type": np.asarray(system.residue_type_id, dtype=np.int64),
        "residue_pos": res,
        "seq_len": np.full(n, system.n_residues, dtype=np.int64),
        "atom_in_residue": np.arange(n, dtype=np.int64) - start[res],
    }


@dataclass
class AtomBatch:
    """Padded per-atom conditioning of ``B`` sequences: long tensors [B, N], ``mask`` bool [B, N]
    (True = real atom; padded atoms have all ids 0)."""

    atom_type: torch.Tensor
    residue_type: torch.Tensor
    residue_pos: torch.Tensor
    seq_len: torch.Tensor
    atom_in_residue: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def pad(cls, atoms: list[dict[str, np.ndarray]]) -> AtomBatch:
        """Right-pad the :func:`atom_conditioning` arrays of several systems."""
        N = max(len(a["atom_type"]) for a in atoms)
        out = {k: torch.zeros(len(atoms), N, dtype=torch.long) for k in ATOM_FIELDS}
        mask = torch.zeros(len(atoms), N, dtype=torch.bool)
        for i, a in enumerate(atoms):
            n = len(a["atom_type"])
            mask[i, :n] = True
            for k in ATOM_FIELDS:
                out[k][i, :n] = torch.as_tensor(a[k])
        return cls(mask=mask, **out)

    def to(self, device: torch.device | str) -> AtomBatch:
        return AtomBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class _EncoderBlock(nn.Module):
    """Pre-norm block: bidirectional attention over the real atoms, SwiGLU MLP (hidden 2C)."""

    def __init__(self, C: int, n_head: int, head_dim: int) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.norm1 = nn.RMSNorm(C)
        self.qkv = nn.Linear(C, 3 * n_head * head_dim, bias=False)
        self.o = nn.Linear(n_head * head_dim, C, bias=False)
        self.norm2 = nn.RMSNorm(C)
        self.up = nn.Linear(C, 4 * C, bias=False)
        self.down = nn.Linear(2 * C, C, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        H, Dh = self.n_head, self.head_dim
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.o(y.transpose(1, 2).reshape(B, N, H * Dh))
        gate, val = self.up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * val)


class ConditioningEncoder(nn.Module):
    """Bidirectional transformer over the atoms of a sequence: [B, N] ids -> [B, N, C]."""

    def __init__(self, cfg: ConditioningConfig, n_embd: int) -> None:
        super().__init__()
        C = n_embd
        self.emb = nn.ModuleDict(
            {
                "atom_type": nn.Embedding(cfg.n_atom_types, C),
                "residue_type": nn.Embedding(cfg.n_residue_types, C),
                "residue_pos": nn.Embedding(cfg.max_residues, C),
                "seq_len": nn.Embedding(cfg.max_residues + 1, C),
                "atom_in_residue": nn.Embedding(cfg.max_residue_atoms, C),
            }
        )
        self.blocks = nn.ModuleList(
            [_EncoderBlock(C, cfg.n_head, cfg.head_dim) for _ in range(cfg.n_layer)]
        )
        self.norm = nn.RMSNorm(C)
        self.out = nn.Linear(C, C, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features**-0.5)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for b in self.blocks:  # residual branches start as identity
            nn.init.zeros_(b.o.weight)
            nn.init.zeros_(b.down.weight)

    def forward(self, atoms: AtomBatch) -> torch.Tensor:
        """Conditioning vectors [B, N, C] (zero on padded atoms)."""
        x = sum(self.emb[k](getattr(atoms, k)) for k in ATOM_FIELDS)  # [B, N, C]
        for block in self.blocks:
            x = block(x, atoms.mask)
        return self.out(self.norm(x)) * atoms.mask.unsqueeze(-1).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# the model


def system_features(
    system: PeptideSystem, n_coords: int | Standardization | None = None
) -> TokenFeatures:
    """Token features ([T] tensors) of ``system``.

    ``n_coords`` is a token count (atom-major, ``3(n-1)`` by default) or the
    :class:`Standardization` whose modelled coordinates the tokens are (gauge frames skip six).
    """
    if isinstance(n_coords, Standardization):
        return token_features_for_system(
            system.atom_type_id,
            system.residue_type_id,
            system.residue_index,
            coord_index=n_coords.coord_index,
        )
    return token_features_for_system(
        system.atom_type_id, system.residue_type_id, system.residue_index, n_coords
    )


@dataclass
class SystemEncoding:
    """What the transferable model needs of one sequence (all aligned with its D tokens).

    Attributes
    ----------
    system : PeptideSystem
    standardization : gauge frame of the system with the global ``std_nm``
    feats : TokenFeatures, [D] long tensors
    token_atom : LongTensor [D], the atom of each token
    floor : LongTensor [D], lowest allowed bin per token (gauge tokens a, c > 0)
    atoms : :func:`atom_conditioning` arrays [n]
    """

    system: PeptideSystem
    standardization: Standardization
    feats: TokenFeatures
    token_atom: torch.Tensor
    floor: torch.Tensor
    atoms: dict[str, np.ndarray]

    @property
    def n_tokens(self) -> int:
        return self.standardization.n_coords


def encode_system(system: PeptideSystem, std_nm: float, binning: Binning) -> SystemEncoding:
    """Gauge frame (global ``std_nm``), token features, floors and atom conditioning."""
    std = Standardization(float(std_nm), system.n_atoms, "gauge", system.gauge_atoms)
    floor = binning.token_floor(std)
    return SystemEncoding(
        system=system,
        standardization=std,
        feats=system_features(system, std),
        token_atom=torch.as_tensor(std.coord_index[0], dtype=torch.long),
        floor=torch.as_tensor(floor, dtype=torch.long),
        atoms=atom_conditioning(system),
    )


@dataclass
class TokenBatch:
    """A right-padded batch of sequences (module docstring): targets [B, T] (-1 = padding),
    feats / token_atom / floor [B, T], atoms [B, N]."""

    targets: torch.Tensor
    feats: TokenFeatures
    token_atom: torch.Tensor
    floor: torch.Tensor
    atoms: AtomBatch

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.targets.to(device),
            self.feats.to(device),
            self.token_atom.to(device),
            self.floor.to(device),
            self.atoms.to(device),
        )

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`TransferableARBG.forward` / ``log_prob``."""
        return {"atoms": self.atoms, "token_atom": self.token_atom, "floor": self.floor}


def collate(encs: list[SystemEncoding], bins: list[torch.Tensor]) -> TokenBatch:
    """Right-pad the bins [D_i] of ``len(encs)`` sequences into a :class:`TokenBatch`."""
    T = max(e.n_tokens for e in encs)
    B = len(encs)
    targets = torch.full((B, T), -1, dtype=torch.long)
    token_atom = torch.zeros(B, T, dtype=torch.long)
    floor = torch.zeros(B, T, dtype=torch.long)
    feats = {f.name: torch.zeros(B, T, dtype=torch.long) for f in fields(TokenFeatures)}
    for i, (e, b) in enumerate(zip(encs, bins, strict=True)):
        d = e.n_tokens
        targets[i, :d] = torch.as_tensor(b).long()
        token_atom[i, :d] = e.token_atom
        floor[i, :d] = e.floor
        for k, t in e.feats.tensors().items():
            feats[k][i, :d] = t
    return TokenBatch(
        targets, TokenFeatures(**feats), token_atom, floor, AtomBatch.pad([e.atoms for e in encs])
    )


class TransferableARBG(ARBG):
    """:class:`ARBG` with a sequence-conditioning encoder (module docstring).

    Parameters
    ----------
    config : ModelConfig of the decoder (``max_atoms`` covers the largest sequence)
    conditioning : ConditioningConfig
    """

    def __init__(self, config: ModelConfig, conditioning: ConditioningConfig) -> None:
        if config.head not in ("bins", "mol", "gmm"):
            raise ValueError(f"transferable models need a discrete head, not {config.head!r}")
        super().__init__(config)
        self.conditioning = conditioning
        self.encoder = ConditioningEncoder(conditioning, config.n_embd)

    def condition(self, atoms: AtomBatch, token_atom: torch.Tensor) -> torch.Tensor:
        """Encoder output of each token's atom: [B, T, C] (``token_atom`` [B, T] or [T])."""
        h = self.encoder(atoms)  # [B, N, C]
        idx = token_atom if token_atom.dim() == 2 else token_atom.expand(h.shape[0], -1)
        return h.gather(1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))

    def forward(  # type: ignore[override]
        self,
        tokens: torch.Tensor,
        feats: TokenFeatures | None = None,
        targets: torch.Tensor | None = None,
        *,
        cond: torch.Tensor | None = None,
        atoms: AtomBatch | None = None,
        token_atom: torch.Tensor | None = None,
        floor: torch.Tensor | None = None,
        logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """:meth:`ARBG.forward` with conditioning.

        Parameters
        ----------
        tokens, feats, targets, logits : as :meth:`ARBG.forward` (``feats`` required)
        cond : Tensor [B or 1, T or T_full, C], precomputed :meth:`condition` (sampling)
        atoms, token_atom : or the atoms [B, N] and token atoms [B, T] to encode (training)
        floor : LongTensor [T_full] or [B, T_full], lowest allowed bin per token
        """
        T = tokens.shape[1]
        if atoms is not None:
            if token_atom is None:
                raise ValueError("atoms need token_atom")
            cond = self.condition(atoms, token_atom)
        if cond is None:
            raise ValueError(
                "a transferable model needs its sequence conditioning: bind it to a "
                "system (arbg.nn.conditioning.BoundModel) or pass atoms/cond"
            )
        if cond.shape[-2] != T:
            cond = cond[..., :T, :]
        if floor is not None and floor.shape[-1] != T:
            floor = floor[..., :T]
        if not logits and self.fused_loss_ok(targets):
            h = self.hidden(tokens, feats, extra=cond)
            return None, self.fused_loss(h, targets, floor)  # type: ignore[arg-type]
        out, _ = super().forward(tokens, feats, None, extra=cond)
        if floor is not None:
            out = self.head.apply_floor(out, floor)
        loss = self.head.loss(out, targets) if targets is not None else None
        return out, loss

    def log_prob(  # type: ignore[override]
        self,
        bins: torch.Tensor,
        feats: TokenFeatures | None = None,
        tau: float = 1.0,
        **cond_kwargs: Any,
    ) -> torch.Tensor:
        """Teacher-forced ``sum_j log p`` [B] float64 over the real tokens (``bins == -1`` =
        padding, skipped); ``cond_kwargs`` as :meth:`forward`."""
        inputs = self.shift_right(self.head.tokens(bins.clamp_min(0)))
        out, _ = self.forward(inputs, feats, **cond_kwargs)
        lp = self.head.log_prob(out, bins.clamp_min(0), tau).to(torch.float64)  # [B, T]
        return torch.where(bins >= 0, lp, torch.zeros_like(lp)).sum(dim=-1)

    def batch_log_prob(
        self, encs: list[SystemEncoding], bins: list[torch.Tensor], tau: float = 1.0
    ) -> torch.Tensor:
        """``log_prob`` [B] float64 of sequences of different lengths in one padded batch."""
        batch = collate(encs, bins).to(next(self.parameters()).device)
        return self.log_prob(batch.targets, batch.feats, tau, **batch.kwargs())


class BoundModel(nn.Module):
    """A :class:`TransferableARBG` bound to one sequence: the :class:`ARBG` interface that
    :mod:`arbg.nn.decoder`, :mod:`arbg.sampling.sampler` and :mod:`arbg.sampling.runs` use.

    The conditioning is computed once, here, and reused for every token and batch row (it is
    stale if the weights change afterwards: bind again).
    """

    def __init__(self, net: TransferableARBG, enc: SystemEncoding) -> None:
        super().__init__()
        self.net = net
        self.system = enc.system
        dev = next(net.parameters()).device
        for name, t in enc.feats.tensors().items():
            self.register_buffer(f"feat_{name}", t.long().clone().to(dev))
        self.register_buffer("floor", enc.floor.clone().to(dev))
        with torch.no_grad():
            cond = net.condition(AtomBatch.pad([enc.atoms]).to(dev), enc.token_atom.to(dev))
        self.register_buffer("cond", cond)  # [1, D, C]
        self.has_default_feats = True

    config = property(lambda self: self.net.config)
    head = property(lambda self: self.net.head)
    start_id = property(lambda self: self.net.start_id)

    def default_features(self) -> TokenFeatures:
        return TokenFeatures(
            **{f.name: getattr(self, f"feat_{f.name}") for f in fields(TokenFeatures)}
        )

    def shift_right(self, bins: torch.Tensor) -> torch.Tensor:
        return self.net.shift_right(bins)

    def forward(
        self,
        tokens: torch.Tensor,
        feats: TokenFeatures | None = None,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = feats if feats is not None else self.default_features()
        return self.net(tokens, f, targets, cond=self.cond, floor=self.floor)

    def log_prob(
        self, bins: torch.Tensor, feats: TokenFeatures | None = None, tau: float = 1.0
    ) -> torch.Tensor:
        f = feats if feats is not None else self.default_features()
        return self.net.log_prob(bins, f, tau, cond=self.cond, floor=self.floor)


# --------------------------------------------------------------------------------------------------
# checkpoints, limits, zero-shot binding


def solvent_of(forcefield: tuple[str, ...] | list[str]) -> str:
    """The implicit-solvent file(s) of a force-field list, or ``"vacuum"``."""
    files = [f for f in forcefield if any(k in f.lower() for k in ("obc", "implicit", "gbn"))]
    return " + ".join(files) if files else "vacuum"


def spec_template(systems: list[PeptideSystem]) -> dict[str, Any]:
    """The force-field / termini / temperature settings shared by ``systems`` (ValueError if
    they differ)."""
    tpl = None
    for s in systems:
        d = {k: v for k, v in s.spec.to_dict().items() if k in TEMPLATE_KEYS}
        if tpl is None:
            tpl = d
        elif d != tpl:
            raise ValueError(
                f"sequence {s.name!r} has settings {d}, others {tpl}: a corpus "
                "must share force field, temperature and termini"
            )
    if tpl is None:
        raise ValueError("no systems")
    return tpl


def check_limits(system: PeptideSystem, limits: dict[str, Any]) -> None:
    """ValueError unless ``system`` is within what the transferable model was trained on."""
    seq = system.spec.sequence
    problems = []
    if system.n_residues > limits["max_residues"]:
        problems.append(f"{system.n_residues} residues > max {limits['max_residues']}")
    if system.n_atoms > limits["max_atoms"]:
        problems.append(f"{system.n_atoms} atoms > max {limits['max_atoms']}")
    unknown = sorted(set(seq) - set(limits["residues"]))
    if unknown:
        problems.append(
            f"residue(s) {', '.join(unknown)} never seen in training "
            f"(trained on {''.join(sorted(limits['residues']))})"
        )
    if problems:
        raise ValueError(
            f"sequence {seq!r} is outside the limits of this transferable model: "
            + "; ".join(problems)
        )
