"""Cross-entropy over thousands of bins without a float32 [batch, tokens, bins] tensor.

:func:`linear_cross_entropy` fuses the output projection of the ``bins`` head with the
cross-entropy: rows are processed in chunks; the forward keeps only the per-row log-sum-exp,
the backward recomputes each chunk's logits and turns them into gradients in place. Peak extra
memory is one chunk of logits (``chunk_rows x L`` float32) instead of the ``N x L`` logits, their
float32 copy, the log-softmax and its gradient (4 full tensors for ``F.cross_entropy``).

Under autocast the matrix products run in the autocast dtype (bf16); log-sum-exp, the loss and
the softmax gradient are float32; weight gradients accumulate in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "floored_cross_entropy", "linear_cross_entropy"]

#: logits elements per chunk (64M float32 = 256 MB)
DEFAULT_CHUNK_ELEMENTS = 1 << 26


def _chunk_logits(
    h: torch.Tensor, w: torch.Tensor, floor: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """float32 logits [n, L] of rows ``h`` [n, C] (``-inf`` below each row's floor)."""
    logits = (h.to(dtype) @ w.to(dtype).t()).float()
    if floor is not None:
        below = torch.arange(w.shape[0], device=h.device)[None, :] < floor[:, None]
        logits = logits.masked_fill(below, -math.inf)
    return logits


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, targets, floor, chunk, dtype):  # type: ignore[override]
        N = h.shape[0]
        valid = targets >= 0
        n_valid = valid.sum().clamp_min(1)
        lse = torch.empty(N, dtype=torch.float32, device=h.device)
        picked = torch.empty(N, dtype=torch.float32, device=h.device)
        for s in range(0, N, chunk):
            fl = floor[s : s + chunk] if floor is not None else None
            logits = _chunk_logits(h[s : s + chunk], w, fl, dtype)
            lse[s : s + chunk] = torch.logsumexp(logits, dim=-1)
            t = targets[s : s + chunk].clamp_min(0)
            picked[s : s + chunk] = logits.gather(1, t[:, None])[:, 0]
        loss = torch.where(valid, lse - picked, torch.zeros_like(lse)).sum() / n_valid
        ctx.save_for_backward(h, w, targets, floor if floor is not None else h.new_empty(0), lse)
        ctx.has_floor, ctx.chunk, ctx.dtype, ctx.n_valid = floor is not None, chunk, dtype, n_valid
        return loss

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, w, targets, floor, lse = ctx.saved_tensors
        N, dtype, chunk = h.shape[0], ctx.dtype, ctx.chunk
        scale = grad.float() / ctx.n_valid
        gh = torch.empty_like(h)
        gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for s in range(0, N, chunk):
            hc, tc = h[s : s + chunk], targets[s : s + chunk]
            fl = floor[s : s + chunk] if ctx.has_floor else None
            g = torch.exp(_chunk_logits(hc, w, fl, dtype) - lse[s : s + chunk, None])  # softmax
            g.scatter_add_(1, tc.clamp_min(0)[:, None], -torch.ones_like(g[:, :1]))
            g.mul_(torch.where(tc >= 0, scale, torch.zeros_like(scale))[:, None])  # [n, L]
            gd = g.to(dtype)
            gh[s : s + chunk] = (gd @ w.to(dtype)).to(h.dtype)
            gw += (gd.t() @ hc.to(dtype)).float()
        return gh, gw.to(w.dtype), None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    floor: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(h @ weight.T)`` against ``targets``, chunked.

    Equal (values and gradients, up to float rounding) to
    ``F.cross_entropy(h @ weight.T, targets, ignore_index=-1)`` with the logits below ``floor``
    set to ``-inf``.

    Parameters
    ----------
    h : Tensor [..., C], hidden states (any float dtype)
    weight : Tensor [L, C], the output projection
    targets : LongTensor [...], bins (``-1`` = ignored)
    floor : LongTensor broadcastable to ``targets``, optional, lowest allowed bin per row
    chunk_rows : rows per chunk (default: :data:`DEFAULT_CHUNK_ELEMENTS` / L)

    Returns
    -------
    scalar float32 tensor, nats per valid target
    """
    C, L = h.shape[-1], weight.shape[0]
    hf = h.reshape(-1, C)
    tf = targets.reshape(-1).long()
    if hf.shape[0] != tf.shape[0]:
        raise ValueError(f"h has {hf.shape[0]} rows, targets {tf.shape[0]}")
    fl = None
    if floor is not None and floor.numel():
        fl = floor.to(h.device).long().expand(targets.shape).reshape(-1)
    dtype = h.dtype
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)
    chunk = int(chunk_rows or max(1, DEFAULT_CHUNK_ELEMENTS // L))
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hf, weight, tf, fl, chunk, dtype)


def floored_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, floor: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy with per-token bin floors, without masking the whole logits tensor.

    ``F.cross_entropy`` of the raw logits plus, on the few floored rows only, the change of the
    log-normaliser ``logsumexp(logits[floor:]) - logsumexp(logits)``: the same value and
    gradients as masking the bins below the floor with ``-inf`` (for targets at or above their
    floor, as in all training data), at the cost of the floored rows instead of two extra
    passes over [B, T, L] (mask and its backward).

    Parameters
    ----------
    logits : Tensor [B, T, L]
    targets : LongTensor [B, T] (``-1`` = ignored)
    floor : LongTensor [T] or [B, T], optional

    Returns
    -------
    scalar tensor (nats per valid target)
    """
    L = logits.shape[-1]
    total = F.cross_entropy(
        logits.reshape(-1, L).float(), targets.reshape(-1), ignore_index=-1, reduction="sum"
    )
    n_valid = (targets >= 0).sum().clamp_min(1)
    if floor is not None and floor.numel():
        fl = floor.to(logits.device).long().expand(targets.shape)  # [B, T]
        sel = fl > 0
        sub = logits[sel].float()  # [n, L], the floored rows only
        below = torch.arange(L, device=logits.device)[None, :] < fl[sel][:, None]
        corr = torch.logsumexp(sub.masked_fill(below, -math.inf), -1) - torch.logsumexp(sub, -1)
        total = total + torch.where(targets[sel] >= 0, corr, torch.zeros_like(corr)).sum()
    return total / n_valid
