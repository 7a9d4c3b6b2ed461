"""Incremental decoding: the one loop that draws tokens from an ARBG model.

:class:`Decoder` turns an :class:`arbg.nn.model.ARBG` (any head) or a
:class:`arbg.nn.conditioning.BoundModel` around a transferable one into a fixed-shape decode
step. Every sampler draws through it: :func:`arbg.sampling.sampler.generate` decodes whole
sequences (:meth:`Decoder.run`), the twisted SMC decodes a residue at a time
(:meth:`Decoder.decode`) and reorders the rows after resampling (:meth:`Decoder.reorder`). The
teacher-forced ``ARBG.forward`` is the reference the tests compare it against.

* The keys/values of every layer live in one preallocated buffer [B, H, T, Dh] per layer,
  written in place at the current position (``index_copy_`` with a device position tensor).
* The per-token input embeddings (axis, atom, atom type, residue type and index, the
  transferable model's sequence conditioning, learned positions) are computed once per decoder
  ([T, C], or [B, T, C] for per-row features) and gathered at the current position.
* The ``bins`` head draws by inverse CDF (:func:`arbg.nn.heads.draw_categorical`) from float64
  uniforms drawn up front for the tokens of each :meth:`Decoder.decode` call from an explicit
  ``torch.Generator``; ``log pi`` is the float32 log-softmax of the very logits the bin was drawn
  from, accumulated in float64, and the bin is fed back as the next token, all on the device:
  the token loop never synchronises with the host. The mixture heads (``mol``, ``gmm``,
  ``givt``) draw with ``head.sample`` and score with ``head.log_prob`` of the same parameters.
* On CUDA the ``bins`` head's step is captured once per key-length bucket into a
  ``torch.cuda.CUDAGraph`` and replayed; attention reads the keys of the bucket (a multiple of
  ``bucket`` positions) under a mask ``key <= pos``. On the CPU the same step runs eagerly over
  all ``T`` keys (masked).

Precision: ``dtype=torch.bfloat16`` runs the matrix work in bf16 (weights cast once; the residual
stream, norms, softmax and bookkeeping stay float32, the log-probabilities float64), like
``torch.autocast``; ``log pi`` is exact for the draws made either way.

:func:`auto_batch_size` sizes the batch from the free device memory (KV cache + logits +
activations per row).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from arbg.nn.heads import BinHead, draw_categorical
from arbg.nn.model import ARBG, TokenFeatures, apply_rotary

logger = logging.getLogger(__name__)

__all__ = [
    "CPU_MAX_AUTO_BATCH",
    "Decoder",
    "as_dtype",
    "auto_batch_size",
    "decode_bytes_per_row",
    "free_memory_bytes",
]

#: the CPU gains nothing from larger batches; ``auto`` stops here
CPU_MAX_AUTO_BATCH = 1024


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` or ``torch.bfloat16`` from a dtype or its name (``"float32"``,
    ``"fp32"``, ``"bf16"``, ``"bfloat16"``); ValueError for anything else."""
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16}
        names["bfloat16"] = torch.bfloat16
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    return dtype


def _unwrap(model: Any) -> tuple[ARBG, torch.Tensor | None, torch.Tensor | None]:
    """(decoder network, conditioning [1, T, C] or None, floor [T] or None) of a model.

    A :class:`arbg.nn.conditioning.BoundModel` carries ``net``, ``cond`` and ``floor``; a
    single-system :class:`ARBG` its ``bin_floor`` buffer.
    """
    if hasattr(model, "net") and hasattr(model, "cond"):
        return model.net, model.cond, getattr(model, "floor", None)
    floor = model.bin_floor if model.bin_floor.numel() else None
    return model, None, floor


class Decoder:
    """Fixed-shape, sync-free autoregressive decoding of ``batch`` sequences of ``T`` tokens.

    Parameters
    ----------
    model : ARBG or BoundModel
    batch : int, rows decoded in lock-step
    feats : TokenFeatures with [T] (shared) or [batch, T] tensors (default: the model's own)
    tau : float, temperature of the conditionals
    dtype : torch.float32 or torch.bfloat16, dtype of the matrix work and the KV cache
    graphs : capture CUDA graphs (default: on CUDA with the ``bins`` head)
    bucket : attention reads keys in multiples of this many positions, the rest masked
        (default 64 with graphs, else all ``T``)

    Attributes
    ----------
    bins : LongTensor [batch, T] (device), the tokens drawn so far (columns ``>= n_done`` unset)
    values : float64 Tensor [batch, T] or None, a continuous head's draws in bin units
    log_pi : float64 Tensor [batch] (device), ``sum_j log p_tau(x_j | x_<j)`` of the drawn tokens
    n_done : int, tokens decoded
    """

    def __init__(
        self,
        model: Any,
        batch: int,
        feats: TokenFeatures | None = None,
        tau: float = 1.0,
        dtype: torch.dtype | str = torch.float32,
        graphs: bool | None = None,
        bucket: int | None = None,
    ) -> None:
        net, cond, floor = _unwrap(model)
        f = feats if feats is not None else model.default_features()
        if f is None:
            raise ValueError("the model has no default features; pass feats")
        self.net, self.cfg, self.head = net, net.config, net.head
        self.device = dev = next(net.parameters()).device
        self.B, self.T = int(batch), len(f)
        if f.axis.dim() == 2 and f.axis.shape[0] != self.B:
            raise ValueError(f"per-row features for {f.axis.shape[0]} rows, batch is {self.B}")
        self.tau, self.dtype = float(tau), as_dtype(dtype)
        # the residual stream's dtype: float32, or float64 for a float64 model (tests), whose
        # matrix work then stays float64 unless bf16 is asked for
        self.acc = torch.float64 if net.wte.weight.dtype == torch.float64 else torch.float32
        if self.acc == torch.float64 and self.dtype == torch.float32:
            self.dtype = torch.float64
        self.categorical = isinstance(self.head, BinHead)
        self.graphs = (dev.type == "cuda" and self.categorical) if graphs is None else bool(graphs)
        if self.graphs and not self.categorical:
            raise ValueError("CUDA graphs need the 'bins' head (the mixture heads sample eagerly)")
        # keys read per step: buckets of 64 positions under graphs; all T (masked) otherwise,
        # contiguous, the fastest layout of the batched products on the CPU
        self.bucket = int(bucket or (64 if self.graphs else self.T))
        self.sdpa = dev.type == "cuda" or self.dtype == torch.bfloat16
        with torch.no_grad():
            self._prepare_weights(f.to(dev), cond, floor)
        self._alloc_state()
        self._graphs: dict[int, Any] = {}
        self._pool: Any = None

    # ---- set-up

    def _prepare_weights(
        self, f: TokenFeatures, cond: torch.Tensor | None, floor: torch.Tensor | None
    ) -> None:
        net, cd, T = self.net, self.dtype, self.T
        x = net.feature_embedding(f)  # [T, C] or [B, T, C]
        if cond is not None:
            x = x + cond[0, :T].to(x.dtype)
        if net.wpe is not None:
            x = x + net.wpe(torch.arange(T, device=self.device))
        self.pos_emb = x.to(self.acc).contiguous()  # per-token conditioning, computed once
        self.rope = None
        if net.wpe is None:
            self.rope = (net.rope_cos[:T].contiguous(), net.rope_sin[:T].contiguous())
        self.layers = []
        for blk in net.blocks:
            a = blk.attn
            wqkv = torch.cat([a.q.weight, a.k.weight, a.v.weight]).to(cd).contiguous()
            self.layers.append(
                dict(
                    n1=blk.norm1,
                    n2=blk.norm2,
                    qkv=wqkv,  # [3 H Dh, C]
                    o=a.o.weight.to(cd),
                    up=blk.mlp.up.weight.to(cd),
                    down=blk.mlp.down.weight.to(cd),
                )
            )
        self.value_w = net.value_proj.weight.to(cd) if net.value_proj is not None else None
        self.floor = None  # bins head: [T, L] excluded bins; mixture heads: [T] lowest bin
        if floor is not None and floor.numel():
            fl = floor.reshape(-1)[:T].to(self.device)
            if self.categorical:
                L = self.cfg.n_bins
                self.floor = torch.arange(L, device=self.device)[None, :] < fl[:, None]
            else:
                self.floor = fl
        if self.categorical:
            self.head_w = self.head.proj.weight.to(cd)  # [L, C]

    def _alloc_state(self) -> None:
        c, B, T, dev = self.cfg, self.B, self.T, self.device
        shape = (B, c.n_head, T, c.head_dim)
        self.k = [torch.zeros(shape, device=dev, dtype=self.dtype) for _ in range(c.n_layer)]
        self.v = [torch.zeros(shape, device=dev, dtype=self.dtype) for _ in range(c.n_layer)]
        self.pos = torch.zeros((), dtype=torch.long, device=dev)
        self.tok = torch.full((B, 1), self.net.start_id, dtype=torch.long, device=dev)
        self.u = torch.zeros(T, B, dtype=torch.float64, device=dev)
        self.bins = torch.zeros(B, T, dtype=torch.long, device=dev)
        self.values = (
            torch.zeros(B, T, dtype=torch.float64, device=dev) if self.head.continuous else None
        )
        self.log_pi = torch.zeros(B, dtype=torch.float64, device=dev)
        self.key_pos = torch.arange(T, device=dev)
        self.n_done = 0

    # ---- the step

    def _attend(self, i: int, x: torch.Tensor, n_keys: int) -> torch.Tensor:
        """Attention of layer ``i`` for the token at ``self.pos``: [B, C] -> [B, C]."""
        c, lay = self.cfg, self.layers[i]
        B, H, Dh = self.B, c.n_head, c.head_dim
        h = F.rms_norm(x, (c.n_embd,), lay["n1"].weight, lay["n1"].eps).to(self.dtype)
        q, k, v = F.linear(h, lay["qkv"]).view(B, 3, H, 1, Dh).unbind(1)  # [B, H, 1, Dh] each
        if self.rope is not None:
            cos, sin = (t.index_select(0, self.pos.view(1)) for t in self.rope)  # [1, Dh/2]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        self.k[i].index_copy_(2, self.pos.view(1), k)
        self.v[i].index_copy_(2, self.pos.view(1), v)
        masked = (self.key_pos[:n_keys] > self.pos).view(1, 1, n_keys)  # True = not yet seen
        if self.sdpa:  # GPU / bf16: the fused kernel, as the eager (autocast) path
            keys, vals = self.k[i][:, :, :n_keys], self.v[i][:, :, :n_keys]
            y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=~masked[None])
        else:  # float32 on the CPU: two flat batched products over [B*H] (the fused kernels
            # and 4-D matmuls are slow for one query); the keys of the bucket, masked
            keys = self.k[i].view(B * H, self.T, Dh)[:, :n_keys]  # [B*H, n_keys, Dh]
            vals = self.v[i].view(B * H, self.T, Dh)[:, :n_keys]
            s = torch.bmm(q.reshape(B * H, 1, Dh), keys.transpose(1, 2)) * Dh**-0.5
            y = torch.bmm(torch.softmax(s.masked_fill(masked, -math.inf), dim=-1), vals)
        return F.linear(y.reshape(B, H * Dh), lay["o"]).to(self.acc)

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        lay = self.layers[i]
        h = F.rms_norm(x, (self.cfg.n_embd,), lay["n2"].weight, lay["n2"].eps).to(self.dtype)
        gate, val = F.linear(h, lay["up"]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * val, lay["down"]).to(self.acc)

    def _hidden(self, n_keys: int) -> torch.Tensor:
        """Final hidden state [B, C] (float32; float64 for a float64 model) of the token at
        ``self.pos``."""
        net, tok = self.net, self.tok
        at = self.pos.view(1)
        emb = self.pos_emb.index_select(-2, at)  # [1, C] or [B, 1, C]
        x = net.wte(tok[:, 0]).to(self.acc) + emb.reshape(-1, emb.shape[-1])  # [B, C]
        if self.value_w is not None:  # as autocast: a matrix product in the compute dtype
            vf = net.value_features(tok)[:, 0].to(self.dtype)  # [B, 2K+1]
            x = x + F.linear(vf, self.value_w).to(self.acc)
        for i in range(len(self.layers)):
            x = x + self._attend(i, x, n_keys)
            x = x + self._mlp(i, x)
        return F.rms_norm(x, (self.cfg.n_embd,), net.norm_f.weight, net.norm_f.eps)

    def _step(self, n_keys: int, generator: torch.Generator | None = None) -> None:
        """Decode the token at ``self.pos`` in place: bins, values, log_pi, tok and pos advance."""
        h = self._hidden(n_keys)
        at = self.pos.view(1)
        if self.categorical:
            logits = F.linear(h.to(self.dtype), self.head_w)  # [B, L]
            if self.floor is not None:
                logits = logits.masked_fill(self.floor.index_select(0, at), -math.inf)
            b, lp = draw_categorical(logits, self.tau, self.u.index_select(0, at)[0])
        else:  # mixture heads: parameters [B, 1, P] from the head module itself
            params = self.head(h[:, None])
            if self.floor is not None:
                params = self.head.apply_floor(params, self.floor.index_select(0, at))
            x = self.head.sample(params, self.tau, generator)  # [B, 1] bins or values
            lp = self.head.log_prob(params, x, self.tau)[:, 0]
            b = self.head.tokens(x)[:, 0]
            if self.values is not None:
                self.values.index_copy_(1, at, x.to(torch.float64))
        self.bins.index_copy_(1, at, b.view(-1, 1))
        self.log_pi.add_(lp.to(torch.float64))
        self.tok.copy_(b.view(-1, 1))
        self.pos.add_(1)

    def _n_keys(self, j: int) -> int:
        return min(self.T, -(-(j + 1) // self.bucket) * self.bucket)

    def _graph_for(self, n_keys: int) -> Any:
        g = self._graphs.get(n_keys)
        if g is None:
            saved = [t.clone() for t in (self.pos, self.tok, self.bins, self.log_pi)]
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph (allocator, kernels)
                    self._step(n_keys)
                    self.pos.sub_(1)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            if self._pool is None:  # one memory pool for all buckets (replayed in turn)
                self._pool = torch.cuda.graph_pool_handle()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self._pool):
                self._step(n_keys)
            for t, s in zip((self.pos, self.tok, self.bins, self.log_pi), saved, strict=True):
                t.copy_(s)
            self._graphs[n_keys] = g
        return g

    # ---- public

    def reset(self) -> None:
        """Start new sequences (the buffers are reused)."""
        self.pos.zero_()
        self.log_pi.zero_()
        self.tok.fill_(self.net.start_id)
        self.n_done = 0

    @torch.no_grad()
    def decode(
        self,
        n_tokens: int,
        generator: torch.Generator | None,
        tick: Callable[[float], None] | None = None,
    ) -> None:
        """Draw the next ``n_tokens`` tokens of every row (``bins``, ``values``, ``log_pi``).

        The bins head's ``[n_tokens, batch]`` float64 uniforms are drawn first, in one call;
        the mixture heads draw from ``generator`` token by token. ``tick(batch / T)`` is called
        on the host after each step is queued (progress bars; no synchronisation).
        """
        j0, j1 = self.n_done, self.n_done + int(n_tokens)
        if j1 > self.T:
            raise ValueError(f"cannot decode {n_tokens} more tokens after {j0} of {self.T}")
        if self.categorical and j1 > j0:
            self.u[j0:j1].copy_(
                torch.rand(
                    j1 - j0, self.B, generator=generator, dtype=torch.float64, device=self.device
                )
            )
        for j in range(j0, j1):
            n_keys = self._n_keys(j)
            if self.graphs:
                self._graph_for(n_keys).replay()
            else:
                self._step(n_keys, generator)
            if tick is not None:
                tick(self.B / self.T)
        self.n_done = j1

    def run(
        self, generator: torch.Generator | None, tick: Callable[[float], None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Decode ``batch`` whole sequences from the start.

        Returns
        -------
        bins : LongTensor [batch, T], log_pi : float64 Tensor [batch] (nats), values : float64
        Tensor [batch, T] or None (continuous head); copies, on the device
        """
        self.reset()
        self.decode(self.T, generator, tick)
        values = self.values.clone() if self.values is not None else None
        return self.bins.clone(), self.log_pi.clone(), values

    @torch.no_grad()
    def reorder(self, index: torch.Tensor) -> None:
        """Rows ``index`` [batch] of every row's state (SMC resampling), in place."""
        idx = torch.as_tensor(index, device=self.device).long()
        if idx.shape != (self.B,):
            raise ValueError(f"reorder needs {self.B} row indices, got shape {tuple(idx.shape)}")
        state = [*self.k, *self.v, self.tok, self.bins, self.log_pi]
        if self.values is not None:
            state.append(self.values)
        if self.pos_emb.dim() == 3:  # per-row features
            state.append(self.pos_emb)
        for t in state:
            t.copy_(t.index_select(0, idx))


# --------------------------------------------------------------------------------------------------
# batch sizing


def decode_bytes_per_row(config: Any, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
    """Device bytes one sequence needs in :class:`Decoder`.

    KV cache (``2 n_layer H Dh T`` elements of ``dtype``), the logits and the sampling temporaries
    (``dtype`` logits, float32 tempered logits and exponentials, float64 CDF: ~20 bytes per bin),
    the step's activations (~24 float32 vectors of ``n_embd`` / SwiGLU width) and the bins,
    uniforms and log-probabilities (~24 bytes per token).
    """
    item = torch.empty(0, dtype=dtype).element_size()
    kv = 2 * config.n_layer * config.n_head * config.head_dim * n_tokens * item
    logits = config.n_bins * (item + 4 + 4 + 8 + 4)
    act = 4 * (16 * config.n_embd + 6 * int(config.mlp_hidden))
    return int(kv + logits + act + 24 * n_tokens)


def free_memory_bytes(device: torch.device | str) -> int:
    """Free memory of ``device``: ``cudaMemGetInfo`` on CUDA, available RAM on the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover (non-POSIX)
        return 4 << 30


def auto_batch_size(
    config: Any,
    n_tokens: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    free_bytes: int | None = None,
    fraction: float = 0.8,
    max_batch: int | None = None,
    multiple: int = 64,
) -> int:
    """Largest decode batch whose KV cache, logits and activations fit ``fraction`` of the free
    device memory.

    Parameters
    ----------
    config : ModelConfig of the decoder
    n_tokens : int, tokens per sequence
    device : where the decoding runs
    dtype : matrix / KV-cache dtype
    free_bytes : int, optional, the memory budget (default :func:`free_memory_bytes`)
    fraction : share of ``free_bytes`` to use
    max_batch : cap (default :data:`CPU_MAX_AUTO_BATCH` on the CPU, 65536 on a GPU)
    multiple : round down to a multiple of this (when the batch is at least that large)

    Returns
    -------
    int >= 1
    """
    dev = torch.device(device)
    free = free_memory_bytes(dev) if free_bytes is None else int(free_bytes)
    if free <= 0:
        raise ValueError(f"free_bytes must be positive, got {free}")
    if max_batch is None:
        max_batch = CPU_MAX_AUTO_BATCH if dev.type == "cpu" else 65536
    per_row = decode_bytes_per_row(config, n_tokens, dtype)
    b = min(int(fraction * free) // per_row, int(max_batch))
    if b >= multiple:
        b -= b % multiple
    return max(1, b)
