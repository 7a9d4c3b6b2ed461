"""The ARBG model: a decoder-only causal transformer over binned Cartesian coordinates.

One token per modelled coordinate (``D = 3(n-1)`` per conformation, see :mod:`arbg.nn.coordinates`).
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

Reading order: :class:`ModelConfig` and the size presets, the token features (what coordinate
each position predicts), the blocks (rotary embeddings, RMSNorm, causal self-attention, SwiGLU,
the pre-norm block), then :class:`ARBG`. Incremental decoding (the KV cache) is
:class:`arbg.nn.decoder.Decoder`; ``ARBG.forward`` is the teacher-forced pass, the reference
every decoder is tested against.

On the CPU (float32) the rotary embedding of q and k and the RMSNorm are single autograd
functions with hand-written backwards: PyTorch's CPU RMSNorm is composite (about three times
the time of a LayerNorm, forward plus backward) and autograd through the composite rotation
makes several full passes more than the inverse rotation needs. Elsewhere (CUDA, where
``torch.compile`` fuses them) the composite forms run; both give the same values and gradients
(``tests/test_blocks.py``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from arbg.nn.fused_ce import linear_cross_entropy
from arbg.nn.heads import HEADS, BinHead, Head

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# config

PRESETS: dict[str, dict[str, Any]] = {
    # trains on a 2-core CPU in minutes
    "tiny": dict(n_layer=4, n_embd=128, n_head=4, head_dim=32),
    # the paper's single-system model (aldp, aaa): 7.4M parameters at 4096 bins
    "small": dict(n_layer=8, n_embd=256, n_head=8, head_dim=32),
    # the paper's Chignolin model
    "medium": dict(n_layer=12, n_embd=512, n_head=8, head_dim=64),
    # the transferable model's size
    "large": dict(n_layer=16, n_embd=768, n_head=8, head_dim=64),
}


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`ARBG`.

    Attributes
    ----------
    n_bins : int
        Number of bins ``L`` (the start token has id ``L``, so the input vocabulary is ``L + 1``).
    n_layer, n_head, head_dim, n_embd : int
        Depth, attention heads, per-head width and residual channel width.
    mlp_ratio : float
        Width of the fused SwiGLU gate+up projection in units of ``n_embd`` (hidden width is
        ``mlp_ratio * n_embd / 2``) unless ``mlp_hidden`` is given.
    mlp_hidden : int or None
        Explicit SwiGLU hidden width.
    max_atoms : int
        Size of the atom-index embedding; ``max_tokens`` defaults to ``3 * (max_atoms - 1)``.
    max_tokens : int or None
        Longest sequence (rotary table / learned positions / KV cache default).
    n_atom_types, n_residue_types, max_residues : int
        Vocabulary sizes of the atom-type, residue-type and residue-index embeddings.
    head : str
        Output head, a key of :data:`arbg.nn.heads.HEADS`: ``"bins"`` (categorical over the bins,
        default), ``"mol"`` / ``"gmm"`` (discretized mixtures of logistics / Gaussians over the
        bins), ``"givt"`` (continuous Gaussian mixture). A checkpoint without it is refused.
    rope : bool
        Rotary position embeddings (True) or a learned absolute position embedding (False).
    rope_base : float
        Rotary frequency base.
    head_kwargs : dict
        Extra keyword arguments of the head (``{"n_mixtures": K}`` for the mixture heads).
    value_fourier : int
        Number of Fourier octaves of the previous coordinate's *value* added to its bin
        embedding (0 = off). A bin-id embedding alone must learn from data that neighbouring bins
        are neighbouring numbers; the value features give that for free, which makes training
        far cheaper (an arbg addition, not in the paper).
    """

    n_bins: int = 4096
    n_layer: int = 8
    n_head: int = 8
    head_dim: int = 32
    n_embd: int = 256
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None
    max_atoms: int = 256
    max_tokens: int | None = None
    n_atom_types: int = 64
    n_residue_types: int = 32
    max_residues: int = 64
    head: str = "bins"
    rope: bool = True
    rope_base: float = 10000.0
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    value_fourier: int = 12

    def __post_init__(self) -> None:
        if self.max_tokens is None:
            self.max_tokens = 3 * (self.max_atoms - 1)
        if self.mlp_hidden is None:
            self.mlp_hidden = int(round(self.mlp_ratio * self.n_embd / 2))
        if self.rope and self.head_dim % 2:
            raise ValueError("rotary embeddings need an even head_dim")

    @classmethod
    def preset(cls, name: str, n_bins: int, **overrides: Any) -> ModelConfig:
        """Build a config from :data:`PRESETS` (``tiny``, ``small``, ``medium``, ``large``).

        Parameters
        ----------
        name : str
        n_bins : int
        **overrides
            Any other :class:`ModelConfig` field (e.g. ``max_atoms``, ``n_atom_types``).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(n_bins=n_bins, **{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict` (unknown keys are rejected)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# token features


@dataclass
class TokenFeatures:
    """Features of the coordinate predicted at each position; long tensors of shape [T] or [B, T].

    Attributes
    ----------
    axis : 0/1/2 for x/y/z
    atom_index : index of the atom in canonical order
    atom_type : atom-type id (``arbg.chem.systems`` vocabulary)
    residue_type : residue-type id
    residue_index : 0-based residue index
    """

    axis: torch.Tensor
    atom_index: torch.Tensor
    atom_type: torch.Tensor
    residue_type: torch.Tensor
    residue_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.axis.shape[-1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Name -> tensor."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def slice(self, start: int, stop: int) -> TokenFeatures:
        """Positions ``start:stop`` along the last (token) dimension."""
        return TokenFeatures(**{k: v[..., start:stop] for k, v in self.tensors().items()})

    def to(self, device: torch.device | str) -> TokenFeatures:
        """Move all tensors to ``device``."""
        return TokenFeatures(**{k: v.to(device) for k, v in self.tensors().items()})


def token_features_for_system(
    atom_type_id: np.ndarray,
    residue_type_id: np.ndarray,
    residue_index: np.ndarray,
    n_coords: int | None = None,
    coord_index: tuple[np.ndarray, np.ndarray] | None = None,
) -> TokenFeatures:
    """Token features of one system from per-atom arrays.

    By default coordinate ``j`` belongs to atom ``j // 3`` and axis ``j % 3`` (atom-major
    flattening, as in :meth:`arbg.nn.coordinates.Standardization.forward`); ``coord_index`` gives
    the (atom, axis) of each token explicitly (the gauge frame skips six coordinates).

    Parameters
    ----------
    atom_type_id, residue_type_id, residue_index : np.ndarray, shape [n], int
    n_coords : int, optional
        Number of modelled coordinates, default ``3(n-1)``.
    coord_index : (atom [T], axis [T]) int arrays, optional
        :attr:`arbg.nn.coordinates.Standardization.coord_index`; overrides ``n_coords``.

    Returns
    -------
    TokenFeatures with [T] long tensors, ``T = n_coords``.
    """
    n = len(atom_type_id)
    if coord_index is not None:
        atom, axis = (np.asarray(a, dtype=np.int64) for a in coord_index)
    else:
        if n_coords is None:
            n_coords = 3 * (n - 1)
        j = np.arange(n_coords)
        atom, axis = j // 3, j % 3
    if atom.size and atom.max() >= n:
        raise ValueError(f"{atom.size} coordinates need more than the {n} atoms given")

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.long)

    return TokenFeatures(
        axis=t(axis),
        atom_index=t(atom),
        atom_type=t(np.asarray(atom_type_id)[atom]),
        residue_type=t(np.asarray(residue_type_id)[atom]),
        residue_index=t(np.asarray(residue_index)[atom]),
    )


# --------------------------------------------------------------------------------------------------
# Rotary embeddings and RMSNorm


def rotary_tables(max_T: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [max_T, head_dim] (float32), each half-width table repeated twice."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.arange(max_T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, Dh/2]
    ang = torch.cat([ang, ang], dim=-1)  # [T, Dh]
    return ang.cos().float(), ang.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of ``x`` [..., Dh] by the full-width tables
    cos/sin (broadcastable to ``x``; see :func:`rotary_tables`): ``(x1 cos + x2 sin,
    x2 cos - x1 sin)``, computed as ``x * cos + [x2, -x1] * sin``."""
    d = x.shape[-1] // 2
    swapped = torch.cat([x[..., d:], -x[..., :d]], dim=-1)  # [x2, -x1]
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


def _rotate_into(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float, out: torch.Tensor
) -> torch.Tensor:
    """``out = x cos + sign [x2, -x1] sin`` (one full pass and two half passes; the tables'
    halves are equal). ``sign=-1`` is the inverse rotation, i.e. the backward."""
    d = x.shape[-1] // 2
    torch.mul(x, cos, out=out)
    s = sin[..., :d]
    out[..., :d].addcmul_(x[..., d:], s, value=sign)
    out[..., d:].addcmul_(x[..., :d], s, value=-sign)
    return out


class _RotaryQK(torch.autograd.Function):
    """:func:`apply_rotary` of qk [B, T, 2, H, Dh]; the result lies in [2, B, H, T, Dh] memory,
    so that q and k reach the attention contiguous."""

    @staticmethod
    def forward(ctx, qk, cos, sin):  # type: ignore[override]
        B, T, _, H, Dh = qk.shape
        out = qk.new_empty((2, B, H, T, Dh)).permute(1, 3, 0, 2, 4)  # [B, T, 2, H, Dh] view
        ctx.save_for_backward(cos, sin)
        return _rotate_into(qk, cos, sin, 1.0, out)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _rotate_into(grad, cos, sin, -1.0, torch.empty_like(grad)), None, None


def rotate_qk(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rotary` of q and k together: ``qk`` [B, T, 2, H, Dh], tables [T, Dh]."""
    cos, sin = cos[:, None, None].to(qk.dtype), sin[:, None, None].to(qk.dtype)
    if qk.device.type == "cpu" and qk.dtype == torch.float32:  # bf16: rounds like the decoder
        return _RotaryQK.apply(qk, cos, sin)
    return apply_rotary(qk, cos, sin)


class _RMSNormFunction(torch.autograd.Function):
    """``x / rms(x) * w`` over the last dimension, with the backward written out."""

    @staticmethod
    def forward(ctx, x, w, eps):  # type: ignore[override]
        C = x.shape[-1]
        ss = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()  # one pass
        r = torch.rsqrt(ss.div_(C).add_(eps))  # [..., 1]
        ctx.save_for_backward(x, w, r)
        return (x * r).mul_(w)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, w, r = ctx.saved_tensors
        C = x.shape[-1]
        gw = grad * w
        xhat = x * r
        # d/dx of x r: r (gw - xhat <gw, xhat> / C)
        dot = (gw * xhat).sum(-1, keepdim=True).div_(C)
        gx = gw.addcmul_(xhat, dot, value=-1.0).mul_(r)
        gweight = xhat.mul_(grad).reshape(-1, C).sum(0)
        return gx, gweight, None


class RMSNorm(nn.RMSNorm):
    """:class:`torch.nn.RMSNorm` over the last dimension (same parameter and checkpoint key);
    float32 on the CPU: :class:`_RMSNormFunction`, else PyTorch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.device.type != "cpu" or x.dtype != torch.float32 or w is None or w.dtype != x.dtype:
            return super().forward(x)
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return _RMSNormFunction.apply(x, w, eps)


# --------------------------------------------------------------------------------------------------
# Transformer block


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        width = config.n_head * config.head_dim  # may differ from n_embd
        self.q = nn.Linear(config.n_embd, width, bias=False)
        self.k = nn.Linear(config.n_embd, width, bias=False)
        self.v = nn.Linear(config.n_embd, width, bias=False)
        self.o = nn.Linear(width, config.n_embd, bias=False)

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, Dh = self.n_head, self.head_dim
        # one product for q, k, v (the weights stay three Linear modules in the checkpoint)
        w = torch.cat([self.q.weight, self.k.weight, self.v.weight])  # [3 H Dh, C]
        qkv = F.linear(x, w).view(B, T, 3, H, Dh)
        qk, v = qkv.split([2, 1], dim=2)  # split: its backward is a cat, not zeros + copies
        v = v.squeeze(2).transpose(1, 2)  # [B, H, T, Dh]
        if rotary is not None:  # q and k together
            qk = rotate_qk(qk, *rotary)
        q, k = qk.permute(2, 0, 3, 1, 4)  # [B, H, T, Dh] each
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, Dh]
        y = y.transpose(1, 2).reshape(B, T, H * Dh)  # [B, T, H*Dh]
        return self.o(y)


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = int(config.mlp_hidden)  # type: ignore[arg-type]
        self.up = nn.Linear(config.n_embd, 2 * hidden, bias=False)  # fused gate + value
        self.down = nn.Linear(hidden, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, val = self.up(x).chunk(2, dim=-1)  # 2 x [B, T, hidden]
        return self.down(F.silu(gate) * val)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.norm2 = RMSNorm(config.n_embd)
        self.mlp = SwiGLU(config)

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rotary)
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------------------------------
# the model

logger = logging.getLogger(__name__)


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
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm_f = RMSNorm(C)
        if config.head not in HEADS:
            raise ValueError(f"unknown head {config.head!r}; registered: {sorted(HEADS)}")
        # e.g. head_kwargs {"n_mixtures": 10} for the mixture heads
        self.head: Head = HEADS[config.head](C, config.n_bins, **config.head_kwargs)  # type: ignore[call-arg]
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

    def shift_right(self, bins: torch.Tensor) -> torch.Tensor:
        """Inputs for teacher forcing: [start, b_0, ..., b_{T-2}] from targets bins [B, T]."""
        start = torch.full_like(bins[:, :1], self.start_id)
        return torch.cat([start, bins[:, :-1]], dim=1)  # [B, T]

    # ---- forward

    def _features(self, feats: TokenFeatures | None, T: int) -> TokenFeatures:
        if feats is None:
            feats = self.default_features()
            if feats is None:
                raise ValueError("this model has no default features; pass feats")
        if len(feats) == T:
            return feats
        if len(feats) > T:
            return feats.slice(0, T)
        raise ValueError(f"features of length {len(feats)} do not cover {T} positions")

    def feature_embedding(self, f: TokenFeatures) -> torch.Tensor:
        """Sum of the feature embeddings, [T, C] or [B, T] -> [B, T, C] (computed once per
        sequence: the teacher-forced pass adds it to every row, the decoder reads one position
        per step)."""
        return (
            self.axis_emb(f.axis)
            + self.atom_emb(f.atom_index)
            + self.atom_type_emb(f.atom_type)
            + self.residue_type_emb(f.residue_type)
            + self.residue_index_emb(f.residue_index)
        )

    def set_bin_floor(self, floor: torch.Tensor | np.ndarray | None) -> None:
        """Restrict token ``j`` to bins ``>= floor[j]`` (the sampled and scored distribution).

        The gauge frame of :mod:`arbg.nn.coordinates` needs ``a > 0`` and ``c > 0``; the floor is
        built by :meth:`arbg.nn.coordinates.Binning.token_floor` and set by whoever builds the model
        (trainer, checkpoint loader); it is derived from the stored standardization and binning,
        not saved. ``None`` removes it.
        """
        t = torch.zeros(0, dtype=torch.long) if floor is None else torch.as_tensor(floor).long()
        self.bin_floor = t.to(self.wte.weight.device)

    def forward(
        self,
        tokens: torch.Tensor,
        feats: TokenFeatures | None = None,
        targets: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
        logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Teacher-forced pass: head parameters for every position and optionally the loss.

        Parameters
        ----------
        tokens : LongTensor [B, T]
            Bin of the previous coordinate (``n_bins`` = start token at absolute position 0).
        feats : TokenFeatures, optional
            Features of the predicted coordinates, [T] or [B, T] tensors (longer ones are cut to
            the ``T`` positions fed). Defaults to the registered single-system features.
        targets : Tensor [B, T], optional
            Bins to predict (int64, -1 = ignore), or for a continuous head (``head.continuous``)
            real values in bin units (float64, non-finite = ignore); gives the mean negative
            log-likelihood (nats per coordinate, a log-density in bin units for every head).
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
        h = self.hidden(tokens, feats, extra)
        floor = self.bin_floor[: h.shape[1]] if self.bin_floor.numel() else None  # [T]
        if not logits and self.fused_loss_ok(targets):
            return None, self.fused_loss(h, targets, floor)  # type: ignore[arg-type]
        out = self.head(h)
        if floor is not None:  # every head (arbg.nn.heads.Head.apply_floor)
            out = self.head.apply_floor(out, floor)
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
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, n_embd] (after the last norm) of the teacher-forced pass."""
        B, T = tokens.shape
        if T > int(self.config.max_tokens):  # type: ignore[arg-type]
            raise ValueError(f"sequence of {T} tokens > max_tokens {self.config.max_tokens}")
        f = self._features(feats, T)
        x = self.wte(tokens)  # [B, T, C]
        if self.value_proj is not None:
            x = x + self.value_proj(self.value_features(tokens))
        x = x + self.feature_embedding(f)  # [T, C] summed first, broadcast over the batch once
        if extra is not None:
            x = x + extra
        rotary = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=tokens.device))
        else:
            rotary = (self.rope_cos[:T], self.rope_sin[:T])
        for block in self.blocks:
            x = block(x, rotary)
        return self.norm_f(x)

    def value_features(self, tokens: torch.Tensor) -> torch.Tensor:
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
        for every head (:func:`arbg.sampling.sampler.log_q` adds ``-D log(width)`` and the
        Jacobian for the density in nm).
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
