"""The ARBG model: a decoder-only causal transformer over binned Cartesian coordinates.

One token per modelled coordinate (``D = 3(n-1)`` per conformation, see :mod:`arbg.nn.standardize`).
Position ``j`` receives the bin of coordinate ``j-1`` (a start token, id ``n_bins``, at ``j=0``)
plus embeddings of the axis, atom index, atom type, residue type and residue index of the
coordinate ``j`` it *predicts*, and outputs the parameters of ``p(b_j | b_<j)`` (logits over the
``L`` bins for the categorical :class:`BinHead`).

The recipe follows the paper (``docs/references.md``, Sec. E.1 and Table A.5) in the
nanoGPT / nanochat style: pre-norm RMSNorm, SwiGLU MLP, causal scaled-dot-product attention
(``F.scaled_dot_product_attention``, flash kernels on a GPU), no biases, rotary position embeddings
over the token index (or learned positions). The attention width ``n_head * head_dim`` is
independent of the channel width ``n_embd``.

"Expansion 4" (Table A.5) is implemented as a fused gate+up projection of width ``4 * n_embd``
split into two halves, i.e. a SwiGLU hidden width of ``2 * n_embd``; with untied bin embedding and
output head this gives the paper's ~7.4M parameters for the ``small`` preset at 4096 bins.
"""

from __future__ import annotations

import logging
import math
from dataclasses import fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from arbg.nn.config import PRESETS, ModelConfig
from arbg.nn.features import TokenFeatures, token_features_for_system
from arbg.nn.fused_ce import linear_cross_entropy
from arbg.nn.heads import HEADS, BinHead, Head, build_head
from arbg.nn.layers import Block, KVCache, RMSNorm, apply_rotary, rotary_tables

logger = logging.getLogger(__name__)

__all__ = [  # the model's names, with those of its parts (arbg.nn.config, .features, .layers)
    "ARBG",
    "HEADS",
    "PRESETS",
    "BinHead",
    "Head",
    "KVCache",
    "ModelConfig",
    "TokenFeatures",
    "apply_rotary",
    "build_head",
    "count_params",
    "describe",
    "token_features_for_system",
]


class ARBG(nn.Module):
    """Autoregressive Boltzmann generator over binned coordinates.

    Parameters
    ----------
    config : ModelConfig
    default_feats : TokenFeatures, optional
        [T] features of a single system, stored as buffers so that ``forward(tokens)`` works
        without passing features (single-system models).
    """

    def __init__(self, config: ModelConfig, default_feats: TokenFeatures | None = None) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        self.start_id = config.n_bins
        self.wte = nn.Embedding(config.n_bins + 1, C)  # previous bin (+ start token)
        K = config.value_fourier
        self.value_proj = nn.Linear(2 * K + 1, C, bias=False) if K > 0 else None
        self.axis_emb = nn.Embedding(3, C)
        self.atom_emb = nn.Embedding(config.max_atoms, C)
        self.atom_type_emb = nn.Embedding(config.n_atom_types, C)
        self.residue_type_emb = nn.Embedding(config.n_residue_types, C)
        self.residue_index_emb = nn.Embedding(config.max_residues, C)
        self.wpe = None if config.rope else nn.Embedding(int(config.max_tokens), C)  # type: ignore[arg-type]
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.norm_f = RMSNorm(C)
        self.head = build_head(config)
        if config.rope:
            cos, sin = rotary_tables(int(config.max_tokens), config.head_dim, config.rope_base)  # type: ignore[arg-type]
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        # per-token lowest allowed bin (gauge frame: a, c > 0); empty = no constraint
        self.register_buffer("bin_floor", torch.zeros(0, dtype=torch.long), persistent=False)
        self.has_default_feats = default_feats is not None
        self.chunked_ce = False  # fused_loss: chunked (GPU memory) or full logits (CPU speed)
        if default_feats is not None:
            for name, t in default_feats.tensors().items():
                self.register_buffer(f"feat_{name}", t.long().clone())
        self._init_weights()

    # ---- initialisation / bookkeeping

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features**-0.5)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for block in self.blocks:  # residual branches start as identity (nanochat)
            nn.init.zeros_(block.attn.o.weight)
            nn.init.zeros_(block.mlp.down.weight)
        self.head.init_weights()  # e.g. uniform initial distribution over the bins

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (optionally without the embedding tables)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding))
        return n

    def default_features(self) -> TokenFeatures | None:
        """The registered single-system features ([T] tensors), if any."""
        if not self.has_default_feats:
            return None
        return TokenFeatures(
            **{f.name: getattr(self, f"feat_{f.name}") for f in fields(TokenFeatures)}
        )

    def new_kv_cache(
        self, batch: int, max_T: int | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """A KV cache for ``batch`` sequences on this model's device."""
        c = self.config
        p = next(self.parameters())
        return KVCache(
            c.n_layer,
            batch,
            c.n_head,
            max_T or int(c.max_tokens),
            c.head_dim,  # type: ignore[arg-type]
            device=p.device,
            dtype=dtype or p.dtype,
        )

    def shift_right(self, bins: torch.Tensor) -> torch.Tensor:
        """Inputs for teacher forcing: [start, b_0, ..., b_{T-2}] from targets bins [B, T]."""
        start = torch.full_like(bins[:, :1], self.start_id)
        return torch.cat([start, bins[:, :-1]], dim=1)  # [B, T]

    # ---- forward

    def _features(self, feats: TokenFeatures | None, pos0: int, T: int) -> TokenFeatures:
        if feats is None:
            feats = self.default_features()
            if feats is None:
                raise ValueError("this model has no default features; pass feats")
        if len(feats) == T:
            return feats
        if len(feats) >= pos0 + T:
            return feats.slice(pos0, pos0 + T)
        raise ValueError(
            f"features of length {len(feats)} do not cover positions {pos0}..{pos0 + T}"
        )

    def set_bin_floor(self, floor: torch.Tensor | np.ndarray | None) -> None:
        """Restrict token ``j`` to bins ``>= floor[j]`` (the sampled and scored distribution).

        The gauge frame of :mod:`arbg.nn.standardize` needs ``a > 0`` and ``c > 0``; the floor is
        built by :meth:`arbg.nn.binning.Binning.token_floor` and set by whoever builds the model
        (trainer, checkpoint loader); it is derived from the stored standardization and binning,
        not saved. ``None`` removes it.
        """
        t = torch.zeros(0, dtype=torch.long) if floor is None else torch.as_tensor(floor).long()
        self.bin_floor = t.to(self.wte.weight.device)

    def _apply_bin_floor(self, out: torch.Tensor, pos0: int) -> torch.Tensor:
        floor = self.bin_floor[pos0 : pos0 + out.shape[-2]]  # [T]
        return self.head.apply_floor(out, floor)  # every head (arbg.nn.heads.Head.apply_floor)

    def forward(
        self,
        tokens: torch.Tensor,
        feats: TokenFeatures | None = None,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        extra: torch.Tensor | None = None,
        logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Head parameters for every position and optionally the loss.

        Parameters
        ----------
        tokens : LongTensor [B, T]
            Bin of the previous coordinate (``n_bins`` = start token at absolute position 0).
        feats : TokenFeatures, optional
            Features of the predicted coordinates, [T] or [B, T] tensors, either for exactly the
            ``T`` positions fed or for the whole sequence (then positions ``pos .. pos+T`` are
            taken). Defaults to the registered single-system features.
        targets : Tensor [B, T], optional
            Bins to predict (int64, -1 = ignore), or for a continuous head (``head.continuous``)
            real values in bin units (float64, non-finite = ignore); gives the mean negative
            log-likelihood (nats per coordinate, a log-density in bin units for every head).
        kv_cache : KVCache, optional
            The tokens occupy absolute positions ``kv_cache.pos .. pos+T``; their keys/values are
            appended and ``pos`` advances by ``T``.
        extra : Tensor [B or 1, T, n_embd], optional
            Added to the input embeddings of the ``T`` positions fed (the per-token
            conditioning of :mod:`arbg.nn.conditioning`); None (single-system models) adds nothing.
        logits : bool
            False (training): with ``targets`` and the ``bins`` head, return ``(None, loss)``
            from :meth:`fused_loss` (bin floors applied to the floored rows only; chunked,
            never materialising the [B, T, L] logits, when ``self.chunked_ce``).

        Returns
        -------
        out : head parameters [B, T, n_outputs] (logits [B, T, L] for :class:`BinHead`,
            ``3K + 1`` mixture numbers for the mixture heads of :mod:`arbg.nn.heads`), or None
            (``logits=False``)
        loss : scalar tensor or None
        """
        pos0 = kv_cache.pos if kv_cache is not None else 0
        h = self.hidden(tokens, feats, kv_cache, extra)
        if not logits and self.fused_loss_ok(targets):
            floor = self.bin_floor[pos0 : pos0 + h.shape[1]] if self.bin_floor.numel() else None
            return None, self.fused_loss(h, targets, floor)  # type: ignore[arg-type]
        out = self.head(h)
        if self.bin_floor.numel():
            out = self._apply_bin_floor(out, pos0)
        loss = self.head.loss(out, targets) if targets is not None else None
        return out, loss

    def fused_loss_ok(self, targets: torch.Tensor | None) -> bool:
        """Whether :meth:`fused_loss` applies: bin targets and the ``bins`` head."""
        return (
            targets is not None
            and not targets.is_floating_point()
            and isinstance(self.head, BinHead)
        )

    def fused_loss(
        self, h: torch.Tensor, targets: torch.Tensor, floor: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean cross-entropy (nats per valid target) of the ``bins`` head from the final hidden
        states ``h`` [B, T, C]; ``floor`` [T] or [B, T]: lowest allowed bin per token.

        :func:`arbg.nn.fused_ce.linear_cross_entropy`: chunked with recomputed logits when
        ``self.chunked_ce`` (set by the trainer on GPUs: never a float32 [B, T, L] tensor), else
        small chunks whose log-softmax the backward turns into the gradient in place (fastest on
        the CPU)."""
        w = self.head.proj.weight
        return linear_cross_entropy(h, w, targets, floor, recompute=self.chunked_ce)

    def hidden(
        self,
        tokens: torch.Tensor,
        feats: TokenFeatures | None = None,
        kv_cache: KVCache | None = None,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, n_embd] (after the last norm); advances ``kv_cache``."""
        B, T = tokens.shape
        pos0 = kv_cache.pos if kv_cache is not None else 0
        if pos0 + T > int(self.config.max_tokens):  # type: ignore[arg-type]
            raise ValueError(f"sequence of {pos0 + T} tokens > max_tokens {self.config.max_tokens}")
        f = self._features(feats, pos0, T)
        x = self.wte(tokens)  # [B, T, C]
        if self.value_proj is not None:
            x = x + self.value_proj(self._value_features(tokens))
        # [T, C] features summed first, then broadcast over the batch once
        x = x + (
            self.axis_emb(f.axis)
            + self.atom_emb(f.atom_index)
            + self.atom_type_emb(f.atom_type)
            + self.residue_type_emb(f.residue_type)
            + self.residue_index_emb(f.residue_index)
        )
        if extra is not None:
            x = x + extra
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(pos0, pos0 + T, device=tokens.device))
        else:
            rotary = (self.rope_cos[pos0 : pos0 + T], self.rope_sin[pos0 : pos0 + T])
        for block in self.blocks:
            x = block(x, rotary, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.norm_f(x)

    def _value_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Fourier features [B, T, 2K+1] of the previous coordinate's bin centre, scaled to
        [-1, 1] over the bin range; zero for the start token."""
        L = self.config.n_bins
        is_start = tokens == self.start_id
        dtype = self.value_proj.weight.dtype if self.value_proj is not None else torch.float32
        v = ((tokens.clamp(max=L - 1).to(dtype) + 0.5) / L) * 2.0 - 1.0  # [B, T]
        freqs = math.pi * (2.0 ** torch.arange(self.config.value_fourier, device=tokens.device))
        ang = v.unsqueeze(-1) * freqs  # [B, T, K]
        feats = torch.cat([v.unsqueeze(-1), torch.sin(ang), torch.cos(ang)], dim=-1)
        return feats.masked_fill(is_start.unsqueeze(-1), 0.0)

    def log_prob(
        self,
        bins: torch.Tensor,
        feats: TokenFeatures | None = None,
        tau: float = 1.0,
    ) -> torch.Tensor:
        """Teacher-forced log-probability of whole sequences.

        Parameters
        ----------
        bins : Tensor [B, T]
            Targets of all ``T`` coordinates: bins (int64), or real values in bin units (float)
            for a continuous head; the inputs are ``shift_right(head.tokens(bins))``.
        feats : TokenFeatures, optional
        tau : float
            Temperature of the conditionals.

        Returns
        -------
        Tensor [B], float64: ``sum_j log p(x_j | x_<j)`` in nats, the log-density in bin units
        for every head (add ``Binning.log_density`` and the standardization's Jacobian for the
        density in nm).
        """
        out, _ = self.forward(self.shift_right(self.head.tokens(bins)), feats)
        lp = self.head.log_prob(out, bins, tau)  # [B, T]
        return lp.to(torch.float64).sum(dim=-1)

    def config_dict(self) -> dict[str, Any]:
        """The config as a dict (for checkpoints)."""
        return self.config.to_dict()


def count_params(config: ModelConfig) -> int:
    """Parameter count of :class:`ARBG` with ``config`` (built on the meta device)."""
    with torch.device("meta"):
        model = ARBG(config)
    return model.num_params()


def describe(config: ModelConfig) -> str:
    """One-line summary of a config."""
    n = count_params(config)
    return (
        f"{config.n_layer} layers, {config.n_embd} ch, {config.n_head}x{config.head_dim} heads, "
        f"{config.n_bins} bins, {config.head} head: {n / 1e6:.2f}M parameters"
    )
