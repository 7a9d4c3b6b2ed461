"""Building blocks of the ARBG transformer: KV cache, rotary embeddings, RMSNorm, causal
self-attention, SwiGLU MLP and the pre-norm block.

On the CPU (float32) the rotary embedding of q and k and the RMSNorm are single autograd
functions with hand-written backwards: PyTorch's CPU RMSNorm is composite (about three times
the time of a LayerNorm, forward plus backward) and autograd through the composite rotation
makes several full passes more than the inverse rotation needs. Elsewhere (CUDA, where
``torch.compile`` fuses them) the composite forms run; both give the same values and gradients
(``tests/test_blocks.py``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from arbg.nn.config import ModelConfig

__all__ = [
    "Block",
    "CausalSelfAttention",
    "KVCache",
    "RMSNorm",
    "SwiGLU",
    "apply_rotary",
    "rotary_tables",
    "rotate_qk",
]


# --------------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Preallocated keys/values of every layer for incremental decoding.

    ``k`` and ``v`` have shape [n_layer, B, n_head, max_T, head_dim]; ``pos`` is the number of
    positions already filled (the next token is at position ``pos``).
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_head: int,
        max_T: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layer, batch, n_head, max_T, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def max_T(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        """Forget all positions (the buffers are reused)."""
        self.pos = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Gather the batch dimension by ``index`` [B'] (e.g. after SMC resampling).

        ``B'`` may differ from ``B``; the buffers are replaced.
        """
        index = index.to(self.k.device).long()
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Write k, v [B, H, T, Dh] at ``pos`` for ``layer``; return the keys/values so far."""
        t0, t1 = self.pos, self.pos + k.shape[2]
        if t1 > self.max_T:
            raise ValueError(f"KV cache overflow: {t1} > {self.max_T}")
        self.k[layer, :, :, t0:t1] = k
        self.v[layer, :, :, t0:t1] = v
        return self.k[layer, :, :, :t1], self.v[layer, :, :, :t1]  # [B, H, t1, Dh]


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
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.head_dim = config.n_head, config.head_dim
        width = config.n_head * config.head_dim  # may differ from n_embd
        self.q = nn.Linear(config.n_embd, width, bias=False)
        self.k = nn.Linear(config.n_embd, width, bias=False)
        self.v = nn.Linear(config.n_embd, width, bias=False)
        self.o = nn.Linear(width, config.n_embd, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None,
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
        pos0 = 0
        if kv_cache is not None:
            pos0 = kv_cache.pos
            k, v = kv_cache.update(self.layer_idx, k.to(kv_cache.k.dtype), v.to(kv_cache.v.dtype))
            k, v = k.to(q.dtype), v.to(q.dtype)  # [B, H, pos0+T, Dh]
        if pos0 == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v)  # one query attends to all cached keys
        else:
            # query i (absolute position pos0+i) sees keys 0..pos0+i
            key_pos = torch.arange(pos0 + T, device=x.device)
            mask = key_pos[None, :] <= (pos0 + torch.arange(T, device=x.device))[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, Dh]
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
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.norm2 = RMSNorm(config.n_embd)
        self.mlp = SwiGLU(config)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rotary, kv_cache)
        return x + self.mlp(self.norm2(x))
