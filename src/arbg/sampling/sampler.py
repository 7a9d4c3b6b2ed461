"""KV-cached autoregressive sampling with exact proposal log-likelihoods.

Density convention
------------------
The model draws ``D`` bins ``b`` from tempered categoricals ``softmax(logits / tau)``; each bin is
de-quantized uniformly inside the bin (float64), giving standardized coordinates ``z``;
:meth:`arbg.nn.standardize.Standardization.inverse` maps them to a conformation in nm (centroid
frame, ``D = 3(n-1)``: scaled by ``std_nm``, the last atom placed from the centring constraint;
gauge frame, ``D = 3n - 6``: scattered into the gauge). The exact log-density of the returned
conformation is

    log q(x) = log pi(b) - D log(width) + log J(z),

with ``log pi(b) = sum_j log softmax(logits_j / tau)[b_j]`` (nats, float64 accumulation),
``width`` the bin width in standardized units and ``log J`` the Jacobian of
:meth:`arbg.nn.standardize.Standardization.log_det`: ``-D log(std_nm)`` in the centroid frame, plus
``-log(8 pi^2) - 2 log a - log c`` in the gauge frame. It is a density (nm^-D) on the
translation-reduced configuration space: the space in which ``exp(-u)`` of a
translation-invariant energy is normalisable. Importance weights ``-u - log q`` are then exact up
to one global constant.

De-quantization is always uniform inside the bin, the only choice with a density.

Atom order
----------
Everything here is in the system's canonical atom order (the order of ``PeptideSystem.topology``
and of ``topology.pdb`` in a run directory). Use :meth:`SampleBatch.original_order` for the input
(build) order.

Chirality
---------
The chirality policies (``"zero"``, ``"mirror"``, ``"none"``) are those of
:func:`arbg.sampling.density.apply_chirality`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from arbg.nn.binning import Binning
from arbg.nn.decode import StaticDecoder, auto_batch_size, static_supported
from arbg.nn.heads import BinHead, draw_categorical
from arbg.nn.model import ARBG, KVCache, TokenFeatures
from arbg.nn.standardize import Standardization
from arbg.sampling.density import (  # noqa: F401  (re-exported: the sampler's public face)
    CHIRALITY_POLICIES,
    ChiralityResult,
    apply_chirality,
    bins_to_positions,
    log_q_offset,
    teacher_forced_log_pi,
    values_to_positions,
)
from arbg.sampling.proposal import (  # noqa: F401  (ProposalState, TransformerProposal re-exported)
    ProposalState,
    TransformerProposal,
    _as_dtype,
    _autocast,
    _features,
    _model_device,
    _rows,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CHIRALITY_POLICIES",
    "ChiralityResult",
    "ProposalState",
    "SampleBatch",
    "TransformerProposal",
    "apply_chirality",
    "bins_to_positions",
    "generate",
    "log_q_offset",
    "make_generators",
    "resolve_batch_size",
    "sample_bins",
    "teacher_forced_log_pi",
    "values_to_positions",
]

# --------------------------------------------------------------------------------------------------
# helpers


def make_generators(
    seed: int, device: torch.device | str = "cpu"
) -> tuple[torch.Generator, torch.Generator]:
    """Independent generators for the bin draws (on ``device``) and the in-bin offsets (CPU).

    Both are derived from ``seed`` through ``numpy.random.SeedSequence(seed).spawn(2)``.
    """
    s_bins, s_off = (
        int(s.generate_state(1, np.uint64)[0] >> np.uint64(1))
        for s in np.random.SeedSequence(int(seed)).spawn(2)
    )
    g_bins = torch.Generator(device=torch.device(device)).manual_seed(s_bins)
    g_off = torch.Generator().manual_seed(s_off)
    return g_bins, g_off


# --------------------------------------------------------------------------------------------------
# bins


@torch.no_grad()
def _sample_chunk(
    model: ARBG,
    b: int,
    T: int,
    tau: float,
    generator: torch.Generator,
    feats: TokenFeatures,
    cache: KVCache | None,
    dtype: torch.dtype = torch.float32,
    tick: Callable[[float], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Eager reference path: bins [b, T], log_pi [b] float64 and, for a continuous head, the
    values [b, T] float64 (bin units; None otherwise). The bins head draws from the same
    [T, b] uniforms as :class:`arbg.nn.decode.StaticDecoder`. ``tick(b / T)`` after every
    token (progress bars)."""
    dev = _model_device(model)
    head = model.head
    bins = torch.empty(b, T, dtype=torch.long, device=dev)
    values = torch.empty(b, T, dtype=torch.float64, device=dev) if head.continuous else None
    log_pi = torch.zeros(b, dtype=torch.float64, device=dev)
    start = torch.full((b, 1), model.start_id, dtype=torch.long, device=dev)
    u = None
    if isinstance(head, BinHead):
        u = torch.rand(T, b, generator=generator, dtype=torch.float64, device=dev)
    if cache is not None:
        cache.reset()
    for j in range(T):
        with _autocast(dev, dtype):
            if cache is not None:
                tok = start if j == 0 else bins[:, j - 1 : j]  # [b, 1]
                out, _ = model(tok, feats, kv_cache=cache)  # [b, 1, L]
            else:
                tok = torch.cat([start, bins[:, :j]], dim=1)  # [b, j+1], whole prefix recomputed
                out, _ = model(tok, feats.slice(0, j + 1))
                out = out[:, -1:]  # [b, 1, L]
        if u is not None:  # log pi from the very logits drawn from (float32 log-softmax)
            xj, lp = draw_categorical(out[:, 0], tau, u[j])
            xj, lp = xj[:, None], lp[:, None]
        else:
            xj = head.sample(out, tau, generator)  # [b, 1] bins, or values (continuous head)
            lp = head.log_prob(out, xj, tau)
        log_pi += lp[:, 0].to(torch.float64)
        bins[:, j] = head.tokens(xj)[:, 0]
        if values is not None:
            values[:, j] = xj[:, 0]
        if tick is not None:
            tick(b / T)
    return bins, log_pi, values


def resolve_batch_size(
    model: ARBG,
    batch_size: int | str,
    n_tokens: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str = torch.float32,
) -> int:
    """``batch_size`` as an int: ``"auto"`` is the largest decode batch that fits the free
    memory of the model's device (:func:`arbg.nn.decode.auto_batch_size`; capped at
    :data:`arbg.nn.decode.CPU_MAX_AUTO_BATCH` on the CPU)."""
    if isinstance(batch_size, str):
        if batch_size != "auto":
            if not batch_size.isdigit():
                raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
            batch_size = int(batch_size)
        else:
            dev = torch.device(device) if device is not None else _model_device(model)
            T = n_tokens if n_tokens is not None else len(_features(model, None))
            return auto_batch_size(model.config, T, dev, _as_dtype(dtype))
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


# long: a 57-line numpy docstring (12 parameters, three engines); the chunk loop is _draw_chunks
def sample_bins(
    model: ARBG,
    n: int,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
    feats: TokenFeatures | None = None,
    batch_size: int | str = 1024,
    use_cache: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
    return_values: bool = False,
    engine: str = "auto",
    dtype: torch.dtype | str = torch.float32,
) -> tuple[torch.Tensor, ...]:
    """Draw ``n`` bin sequences autoregressively from the tempered model.

    Token ``j`` is drawn from the tempered conditional (``softmax(logits_j / tau)`` for the bins
    head, by inverse CDF from one float64 uniform, :func:`arbg.nn.heads.draw_categorical`; see
    :mod:`arbg.nn.heads` for the mixture heads) with the given generator; its log-probability
    under that tempered conditional (float32 log-softmax of the very logits drawn from) is
    accumulated in float64. A continuous head (``model.head.continuous``, GIVT) draws real
    values in bin units; their bins are the next tokens, and ``return_values=True`` is required
    to get the values.

    Parameters
    ----------
    model : ARBG
        Moved to ``device`` if given.
    n : int
        Number of sequences.
    tau : float
        Sampling temperature of the conditionals (not the physical temperature).
    generator : torch.Generator
        On the model's device; chunks consume it in order, so results depend on ``batch_size``.
    feats : TokenFeatures, optional
        [T] (shared) or [n, T] features; default the model's single-system features.
    batch_size : int or "auto"
        Internal chunk size (rows sampled in lock-step); ``"auto"``: :func:`resolve_batch_size`.
    use_cache : bool
        Incremental decoding with a preallocated KV cache (True) or recomputation of the whole
        prefix at every step (reference path, ~T/2 times more compute, same draws).
    device : str or torch.device, optional
    progress : bool
        tqdm progress bar over samples.
    return_values : bool
        Also return the drawn values (continuous heads; None for the discrete ones).
    engine : {"auto", "static", "eager"}
        ``static``: :class:`arbg.nn.decode.StaticDecoder` (static KV cache, sync-free token loop,
        CUDA graphs on a GPU; bins head with shared features only); ``eager``: the model's own
        forward per token (every head); ``auto``: static where supported.
    dtype : torch.float32 or torch.bfloat16 (or "float32" / "bf16")
        Precision of the matrix work (bf16: autocast on the eager path); log pi is exact for the
        draws made either way.

    Returns
    -------
    bins : LongTensor [n, T] (CPU)
    log_pi : float64 Tensor [n] (CPU), ``sum_j log p_tau(x_j | x_<j)`` in nats (a log-density
        in bin units for a continuous head)
    values : float64 Tensor [n, T] (CPU) or None, only with ``return_values``: the bin-unit
        values of a continuous head (decode with :func:`values_to_positions`)
    """
    continuous = model.head.continuous
    if continuous and not return_values:
        raise ValueError(
            f"the {model.config.head!r} head is continuous: its bins do not carry "
            "the samples; call sample_bins(..., return_values=True)"
        )
    if engine not in ("auto", "static", "eager"):
        raise ValueError(f"engine must be 'auto', 'static' or 'eager', got {engine!r}")
    dtype = _as_dtype(dtype)
    if device is not None:
        model.to(device)
    dev = _model_device(model)
    f = _features(model, feats).to(dev)
    T = len(f)
    batch_size = resolve_batch_size(model, batch_size, T, dev, dtype)
    if generator is None:
        generator = torch.Generator(device=dev).manual_seed(0)
    static = use_cache and engine != "eager" and static_supported(model, f)
    if engine == "static" and not static:
        raise ValueError("engine='static' needs the bins head, shared [T] features and use_cache")
    out_bins, out_lp, out_val = _draw_chunks(
        model, n, f, tau, generator, batch_size, static, use_cache, dtype, progress
    )
    if not out_bins:
        res = (torch.empty(0, T, dtype=torch.long), torch.empty(0, dtype=torch.float64))
        values = torch.empty(0, T, dtype=torch.float64) if continuous else None
    else:
        res = (torch.cat(out_bins), torch.cat(out_lp))
        values = torch.cat(out_val) if continuous else None
    return (*res, values) if return_values else res


def _draw_chunks(
    model: ARBG,
    n: int,
    f: TokenFeatures,
    tau: float,
    generator: torch.Generator,
    batch_size: int,
    static: bool,
    use_cache: bool,
    dtype: torch.dtype,
    progress: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """The chunks of :func:`sample_bins` in order (one decoder or KV cache reused while the
    chunk size stays): bins, log pi and (continuous heads) values per chunk, on the CPU."""
    T = len(f)
    from tqdm.auto import tqdm

    out_bins, out_lp, out_val = [], [], []  # per chunk, on the CPU
    cache: KVCache | StaticDecoder | None = None
    # the bar moves token by token (a batch takes minutes on a loaded CPU), redrawn every 2 s
    fmt = "{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}, {rate_fmt}]"
    with tqdm(
        total=n, disable=not progress, desc="sampling", unit="sample", bar_format=fmt, mininterval=2
    ) as bar:
        tick = bar.update if progress else None
        for s in range(0, n, batch_size):
            b = min(batch_size, n - s)
            if static:
                if cache is None or cache.B != b:
                    cache = StaticDecoder(model, b, f, tau, dtype)
                bins, lp = cache.run(generator, tick=tick)
                val = None
            else:
                if use_cache and (cache is None or cache.batch != b):
                    cache = model.new_kv_cache(b, max_T=T)
                bins, lp, val = _sample_chunk(
                    model, b, T, tau, generator, _rows(f, s, s + b), cache, dtype, tick=tick
                )
            out_bins.append(bins.cpu())
            out_lp.append(lp.cpu())
            if val is not None:
                out_val.append(val.cpu())
            bar.n = s + b  # exact count (no float drift)
    return out_bins, out_lp, out_val


# --------------------------------------------------------------------------------------------------
# generate


@dataclass
class SampleBatch:
    """Samples with exact proposal log-densities (canonical atom order, nm).

    Attributes
    ----------
    coords : [n, N, 3] float64 nm (centred; after the chirality policy)
    coords_f32 : [n, N, 3] float32 copy for storage (the bins are the lossless record)
    bins : [n, D] int64, the bins of ``coords`` (re-encoding ``coords`` recovers them)
    log_q : [n] float64, exact log q(coords) in nm^-D on the centred space
    log_pi : [n] float64, sampler's tempered categorical log-probability of the drawn bins
    chirality_wrong : [n] bool, weight zero by the chirality policy
    mirrored : [n] bool
    tau, seed, chirality : the settings
    n_tokens : int, tokens generated (n * D, not counting teacher-forced passes)
    n_teacher_forced : int, sequences scored by a teacher-forced pass (mirror policy)
    sampling_s, wall_s : float, seconds spent drawing bins / in total
    """

    coords: np.ndarray
    bins: np.ndarray
    log_q: np.ndarray
    log_pi: np.ndarray
    chirality_wrong: np.ndarray
    mirrored: np.ndarray
    tau: float
    seed: int
    chirality: str
    n_tokens: int
    n_teacher_forced: int = 0
    sampling_s: float = 0.0
    wall_s: float = 0.0
    coords_f32: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.coords_f32 = self.coords.astype(np.float32)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def original_order(self, to_original: np.ndarray) -> np.ndarray:
        """float64 coords in the system's original atom order (``x[:, to_original]``)."""
        return self.coords[:, np.asarray(to_original)]

    def counts(self) -> dict[str, Any]:
        """JSON-serialisable counts and timing."""
        n = len(self)
        return {
            "n": n,
            "tau": self.tau,
            "seed": self.seed,
            "chirality": self.chirality,
            "n_chirality_wrong": int(self.chirality_wrong.sum()),
            "n_mirrored": int(self.mirrored.sum()),
            "n_tokens": self.n_tokens,
            "n_teacher_forced": self.n_teacher_forced,
            "sampling_s": self.sampling_s,
            "wall_s": self.wall_s,
            "samples_per_s": n / self.wall_s if self.wall_s > 0 else float("nan"),
        }


# long: 14 parameters and their docstring; the body is one recipe (draw, decode, chirality)
def generate(
    model: ARBG,
    binning: Binning,
    standardization: Standardization,
    n: int,
    tau: float = 1.0,
    seed: int = 0,
    *,
    feats: TokenFeatures | None = None,
    chirality_atoms: np.ndarray | None = None,
    chirality: str = "zero",
    batch_size: int | str = 1024,
    use_cache: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
    generators: tuple[torch.Generator, torch.Generator] | None = None,
    engine: str = "auto",
    dtype: torch.dtype | str = torch.float32,
) -> SampleBatch:
    """Draw ``n`` conformations with their exact log q.

    Parameters
    ----------
    model, binning, standardization
    n : int
    tau : float
        Sampling temperature of the conditionals.
    seed : int
        Seeds the bin and offset generators (:func:`make_generators`) unless ``generators``.
    feats : TokenFeatures, optional
    chirality_atoms : [r, 4], optional
        (N, CA, C, CB) rows; without them no chirality check is done.
    chirality : {"zero", "mirror", "none"}
    batch_size, use_cache, device, progress, engine, dtype
        See :func:`sample_bins` (``batch_size="auto"`` fits the free device memory).
    generators : (bins generator on the model's device, CPU offset generator), optional

    Returns
    -------
    SampleBatch
    """
    t0 = time.perf_counter()
    if device is not None:
        model.to(device)
    dev = _model_device(model)
    g_bins, g_off = generators if generators is not None else make_generators(seed, dev)
    batch_size = resolve_batch_size(model, batch_size, standardization.n_coords, dev, dtype)
    if model.head.continuous and chirality == "mirror":
        raise ValueError(
            f"chirality='mirror' re-scores bins: not available for the continuous "
            f"{model.config.head!r} head (use 'zero')"
        )
    bins, log_pi, values = sample_bins(
        model,
        n,
        tau,
        g_bins,
        feats,
        batch_size,
        use_cache,
        progress=progress,
        return_values=True,
        engine=engine,
        dtype=dtype,
    )
    t1 = time.perf_counter()
    if values is None:
        x, off = bins_to_positions(bins, binning, standardization, g_off)
    else:  # continuous head: the values are the coordinates, no de-quantization
        x, off = values_to_positions(values, binning, standardization)
    assert off is not None
    lp = log_pi.numpy()
    res = apply_chirality(
        x,
        bins.numpy(),
        lp + off,
        chirality_atoms,
        chirality,
        model=model,
        binning=binning,
        standardization=standardization,
        tau=tau,
        feats=feats,
        batch_size=batch_size,
    )
    batch = SampleBatch(
        coords=res.positions,
        bins=res.bins,
        log_q=res.log_q,
        log_pi=lp,
        chirality_wrong=res.wrong,
        mirrored=res.mirrored,
        tau=float(tau),
        seed=int(seed),
        chirality=chirality,
        n_tokens=int(bins.numel()),
        n_teacher_forced=res.n_teacher_forced,
        sampling_s=t1 - t0,
        wall_s=time.perf_counter() - t0,
    )
    logger.info(
        "generated %d samples in %.2f s (%.1f/s)", n, batch.wall_s, n / max(batch.wall_s, 1e-12)
    )
    return batch
