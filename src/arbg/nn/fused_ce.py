"""Cross-entropy over thousands of bins without a float32 [batch, tokens, bins] tensor.

:func:`linear_cross_entropy` fuses the output projection of the ``bins`` head with the
cross-entropy: rows are processed in chunks; the forward keeps only the loss, the backward
recomputes each chunk's logits and turns them into gradients in place. Peak extra memory is one
chunk of logits (``chunk_rows x L`` float32) instead of the ``N x L`` logits, their float32 copy,
the log-softmax and its gradient (4 full tensors for ``F.cross_entropy``).

Under autocast the matrix products run in the autocast dtype (bf16); the log-softmax, the loss
and the softmax gradient are float32; weight gradients accumulate in float32.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "KEPT_CHUNK_ELEMENTS", "linear_cross_entropy"]

#: logits elements per chunk with ``recompute`` (64M float32 = 256 MB)
DEFAULT_CHUNK_ELEMENTS = 1 << 26
#: logits elements per chunk without (1M float32 = 4 MB): every chunk's log-softmax is kept for
#: the backward either way, but small blocks come back from the allocator's free lists step after
#: step, where one [N, L] block is fresh memory each step (a page fault per 4 kB, on the CPU ~15%
#: of the loss's time at 4096 bins), and each chunk's log-softmax reads its logits from cache
KEPT_CHUNK_ELEMENTS = 1 << 20


def _chunk_logits(
    h: torch.Tensor,
    w: torch.Tensor,
    floor: torch.Tensor | None,
    dtype: torch.dtype,
    sparse: bool = False,
) -> torch.Tensor:
    """float32 logits [n, L] of rows ``h`` [n, C], ``-inf`` below each row's floor (in place;
    ``sparse``: on the floored rows only, found with a host-synchronising ``nonzero``: floors
    are rare, a gauge frame has two per sequence)."""
    logits = (h.to(dtype) @ w.to(dtype).t()).float()
    if floor is not None:
        arange = torch.arange(w.shape[0], device=h.device)[None, :]
        if sparse:
            rows = torch.nonzero(floor > 0)[:, 0]
            logits[rows] = logits[rows].masked_fill(arange < floor[rows][:, None], -math.inf)
        else:
            logits.masked_fill_(arange < floor[:, None], -math.inf)
    return logits


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, targets, floor, chunk, dtype, recompute):  # type: ignore[override]
        N = h.shape[0]
        valid = targets >= 0
        n_valid = valid.sum().clamp_min(1)
        picked = torch.empty(N, dtype=torch.float32, device=h.device)
        kept = []
        for s in range(0, N, chunk):
            fl = floor[s : s + chunk] if floor is not None else None
            logits = _chunk_logits(h[s : s + chunk], w, fl, dtype, sparse=not recompute)
            lsm = torch.log_softmax(logits, dim=-1)  # one fused kernel (logsumexp is composite)
            del logits
            t = targets[s : s + chunk].clamp_min(0)
            picked[s : s + chunk] = lsm.gather(1, t[:, None])[:, 0]
            if not recompute:
                kept.append(lsm)  # turned into the gradient in place by the backward
        loss = -torch.where(valid, picked, torch.zeros_like(picked)).sum() / n_valid
        ctx.save_for_backward(h, w, targets, floor if floor is not None else h.new_empty(0))
        ctx.has_floor, ctx.chunk, ctx.dtype, ctx.n_valid = floor is not None, chunk, dtype, n_valid
        ctx.kept = kept
        return loss

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, w, targets, floor = ctx.saved_tensors
        N, dtype, chunk = h.shape[0], ctx.dtype, ctx.chunk
        scale = grad.float() / ctx.n_valid
        gh = torch.empty_like(h)
        gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for i, s in enumerate(range(0, N, chunk)):
            hc, tc = h[s : s + chunk], targets[s : s + chunk]
            if ctx.kept:
                g = ctx.kept[i].exp_()  # softmax, in place of the saved log-softmax
            else:
                fl = floor[s : s + chunk] if ctx.has_floor else None
                g = torch.softmax(_chunk_logits(hc, w, fl, dtype), dim=-1)
            g.scatter_add_(1, tc.clamp_min(0)[:, None], -torch.ones_like(g[:, :1]))
            # the per-row scale (grad / n_valid, 0 for ignored rows) goes on the narrow side of
            # each product instead of a pass over [n, L]
            row = torch.where(tc >= 0, scale, torch.zeros_like(scale))[:, None]  # [n, 1]
            gd = g.to(dtype)
            gh[s : s + chunk] = ((gd @ w.to(dtype)).float() * row).to(h.dtype)
            gw += (gd.t() @ (hc.float() * row).to(dtype)).float()
        ctx.kept = []
        return gh, gw.to(w.dtype), None, None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    floor: torch.Tensor | None = None,
    chunk_rows: int | None = None,
    recompute: bool = True,
) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(h @ weight.T)`` against ``targets``.

    Equal (values and gradients, up to float rounding) to
    ``F.cross_entropy(h @ weight.T, targets, ignore_index=-1)`` with the logits below ``floor``
    set to ``-inf``.

    ``recompute=True`` (GPUs): chunks of rows; the forward keeps only the loss, the backward
    recomputes each chunk's logits (one more head product): peak memory one chunk.
    ``recompute=False`` (CPU): chunks of :data:`KEPT_CHUNK_ELEMENTS` whose float32 log-softmax
    the backward turns into the gradient in place: fewer passes over [N, L] than ``log_softmax``
    + ``nll_loss`` and their backwards (no zero-filled gradient, no separate gradient tensor),
    and no fresh [N, L] memory per step.

    Parameters
    ----------
    h : Tensor [..., C], hidden states (any float dtype)
    weight : Tensor [L, C], the output projection
    targets : LongTensor [...], bins (``-1`` = ignored)
    floor : LongTensor broadcastable to ``targets``, optional, lowest allowed bin per row
    chunk_rows : rows per chunk (default :data:`DEFAULT_CHUNK_ELEMENTS` / L with ``recompute``,
        else :data:`KEPT_CHUNK_ELEMENTS` / L)
    recompute : see above

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
    elements = DEFAULT_CHUNK_ELEMENTS if recompute else KEPT_CHUNK_ELEMENTS
    chunk = int(chunk_rows or max(1, elements // L))
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hf, weight, tf, fl, chunk, dtype, recompute)
