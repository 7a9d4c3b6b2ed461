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
A rotation-augmented Cartesian model can emit D-residues; the force field is mirror symmetric, so
the target is ``exp(-u)`` restricted to all-L conformations. Policies (:func:`apply_chirality`):

* ``"zero"`` (default): a sample with any D C-alpha gets weight zero (flag ``chirality_wrong``;
  exact, self-normalization absorbs the rejection).
* ``"mirror"``: a sample whose *every* chiral residue is D is replaced by ``y = -x``. The stored
  proposal is then ``Y = M(X)``, whose density at an all-L ``y`` is ``q(y) + q(-y)``; this holds
  for every fully-L or fully-D draw (not only the mirrored ones), so a second teacher-forced pass
  on the re-encoded ``-x`` is run for all of them. Partially wrong samples still get weight zero.
  Keeping the original ``log q`` for a mirrored sample (the published shortcut) is biased and is
  not offered.
* ``"none"``: no check (for targets without chirality).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from arbg.nn.binning import Binning
from arbg.nn.decode import StaticDecoder, auto_batch_size, static_supported
from arbg.nn.heads import BinHead, draw_categorical, values_to_z
from arbg.nn.model import ARBG, KVCache, TokenFeatures
from arbg.nn.standardize import Standardization
from arbg.sampling.proposal import (  # noqa: F401  (ProposalState, TransformerProposal re-exported)
    ProposalState,
    TransformerProposal,
    _features,
    _model_device,
)
from arbg.sampling.targets import chirality_signs

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

CHIRALITY_POLICIES = ("zero", "mirror", "none")


# --------------------------------------------------------------------------------------------------
# helpers


def _rows(feats: TokenFeatures, start: int, stop: int) -> TokenFeatures:
    """Rows ``start:stop`` of per-sample [n, T] features ([T] features are shared)."""
    if feats.axis.dim() == 1:
        return feats
    return TokenFeatures(**{k: v[start:stop] for k, v in feats.tensors().items()})


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


def _autocast(dev: torch.device, dtype: torch.dtype) -> Any:
    """bf16 autocast on ``dev`` when ``dtype`` is bf16 (a no-op context otherwise)."""
    return torch.autocast(dev.type, torch.bfloat16, enabled=dtype == torch.bfloat16)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16}
        names["bfloat16"] = torch.bfloat16
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    return dtype


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
    from tqdm.auto import tqdm

    out_bins, out_lp, out_val = [], [], []
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
    if not out_bins:
        res = (torch.empty(0, T, dtype=torch.long), torch.empty(0, dtype=torch.float64))
        values = torch.empty(0, T, dtype=torch.float64) if continuous else None
    else:
        res = (torch.cat(out_bins), torch.cat(out_lp))
        values = torch.cat(out_val) if continuous else None
    return (*res, values) if return_values else res


@torch.no_grad()
def teacher_forced_log_pi(
    model: ARBG,
    bins: torch.Tensor | np.ndarray,
    tau: float = 1.0,
    feats: TokenFeatures | None = None,
    batch_size: int = 1024,
    dtype: torch.dtype | str = torch.float32,
) -> torch.Tensor:
    """``model.log_prob`` of stored bins [n, T] in chunks; float64 [n] on the CPU (nats).

    ``dtype=torch.bfloat16`` runs the pass under bf16 autocast (float32 log-softmax)."""
    dev = _model_device(model)
    f = _features(model, feats).to(dev)
    bins = torch.as_tensor(np.asarray(bins) if not isinstance(bins, torch.Tensor) else bins)
    out = []
    for s in range(0, bins.shape[0], batch_size):
        with _autocast(dev, _as_dtype(dtype)):
            lp = model.log_prob(
                bins[s : s + batch_size].to(dev).long(), _rows(f, s, s + batch_size), tau
            )
        out.append(lp.cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def bins_to_positions(
    bins: torch.Tensor | np.ndarray,
    binning: Binning,
    standardization: Standardization,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, float | np.ndarray]:
    """De-quantize bins to centred conformations.

    Parameters
    ----------
    bins : int [n, 3(N-1)]
    binning, standardization
    generator : torch.Generator (CPU)
        Source of the uniform in-bin offsets, drawn as one ``torch.rand([n, D], float64)``.

    Returns
    -------
    positions : np.ndarray [n, N, 3], float64 nm, canonical order, centre of geometry at 0
    log_q_offset : float, np.ndarray [n] or None
        ``-D log(width) + log Jacobian`` so that ``log q(x) = log_pi + log_q_offset`` (nm^-D
        density, see the module docstring; an array in the gauge frame, whose Jacobian depends
        on the conformation).
    """
    b = torch.as_tensor(bins).cpu().long()
    z = binning.decode(b, generator=generator)  # [n, D] float64, uniform in each bin
    x = standardization.inverse(z).numpy()  # [n, N, 3]
    return x, log_q_offset(binning, standardization, z)


def log_q_offset(
    binning: Binning, standardization: Standardization, z: Any = None
) -> float | np.ndarray:
    """``-D log(width) + log Jacobian``: ``log q(x) = log_pi + this``.

    Parameters
    ----------
    binning, standardization
    z : [n, D] standardized coordinates of the samples; required in the gauge frame, whose
        Jacobian ``-2 log a - log c`` depends on the conformation
        (:meth:`arbg.nn.standardize.Standardization.log_det`).

    Returns
    -------
    float (centroid frame) or np.ndarray [n] float64 (gauge frame)
    """
    d = standardization.n_coords
    return -d * math.log(binning.width) + standardization.log_det(z)


# --------------------------------------------------------------------------------------------------
# chirality


@dataclass
class ChiralityResult:
    """Outcome of :func:`apply_chirality` (arrays aligned with the input samples).

    Attributes
    ----------
    positions : [n, N, 3] float64 nm (mirrored rows replaced by ``-x``)
    bins : [n, D] int64 (mirrored rows re-encoded)
    log_q : [n] float64 (``log(q(y) + q(-y))`` under ``"mirror"`` where applicable)
    wrong : [n] bool, the stored sample has a D residue (weight zero)
    mirrored : [n] bool
    n_teacher_forced : int, sequences scored by the second pass
    """

    positions: np.ndarray
    bins: np.ndarray
    log_q: np.ndarray
    wrong: np.ndarray
    mirrored: np.ndarray
    n_teacher_forced: int = 0


def apply_chirality(
    positions: np.ndarray,
    bins: np.ndarray,
    log_q: np.ndarray,
    chirality_atoms: np.ndarray | None,
    policy: str = "zero",
    *,
    model: ARBG | None = None,
    binning: Binning | None = None,
    standardization: Standardization | None = None,
    tau: float = 1.0,
    feats: TokenFeatures | None = None,
    batch_size: int = 1024,
) -> ChiralityResult:
    """Apply a chirality policy (module docstring) to de-quantized samples.

    Parameters
    ----------
    positions : [n, N, 3] float64 nm, canonical order
    bins : [n, D] int
    log_q : [n] float64, exact log q of ``positions``
    chirality_atoms : [r, 4] (N, CA, C, CB) or None/empty (nothing to check)
    policy : {"zero", "mirror", "none"}
    model, binning, standardization, tau, feats, batch_size
        Needed by ``"mirror"`` for the teacher-forced pass on the mirrored bins.

    Returns
    -------
    ChiralityResult (new arrays; inputs are not modified)
    """
    if policy not in CHIRALITY_POLICIES:
        raise ValueError(f"unknown chirality policy {policy!r}; choose from {CHIRALITY_POLICIES}")
    x = np.array(positions, dtype=np.float64)
    b = np.array(bins, dtype=np.int64)
    lq = np.array(log_q, dtype=np.float64)
    n = x.shape[0]
    none = np.zeros(n, dtype=bool)
    chir = np.zeros((0, 4), np.int64) if chirality_atoms is None else np.asarray(chirality_atoms)
    chir = chir.reshape(-1, 4)
    chir = chir[np.all(chir >= 0, axis=1)]
    if policy == "none" or chir.shape[0] == 0:
        return ChiralityResult(x, b, lq, none, none.copy())
    signs = chirality_signs(x, chir)  # [n, r]
    wrong = np.any(signs < 0, axis=1)
    if policy == "zero":
        return ChiralityResult(x, b, lq, wrong, none.copy())
    if model is None or binning is None or standardization is None:
        raise ValueError("chirality='mirror' needs model, binning and standardization")
    all_d = np.all(signs == -1, axis=1)
    all_l = np.all(signs == 1, axis=1)
    pair = all_d | all_l  # y and -y both reachable: density q(y) + q(-y)
    idx = np.flatnonzero(pair)
    mirrored = all_d.copy()
    if idx.size:
        logger.info("chirality (mirror): scoring q(-x) of %d samples (teacher-forced)", idx.size)
        xm = -x[idx]
        zm = standardization.forward(xm)
        bm, n_clip = binning.encode(zm)  # bins of -x
        outside = np.any((zm < binning.low) | (zm >= binning.high), axis=1)
        lq_m = teacher_forced_log_pi(model, bm, tau, feats, batch_size).numpy() + log_q_offset(
            binning, standardization, zm
        )
        lq_m[outside] = -np.inf  # -x outside the bin range: q(-x) = 0
        lq[idx] = np.logaddexp(lq[idx], lq_m)
        md = all_d[idx]
        x[idx[md]] = xm[md]
        b[idx[md]] = bm[md]
        if n_clip:
            logger.warning("chirality mirror: %d coordinates of -x outside the bin range", n_clip)
    wrong = wrong & ~all_d
    logger.info(
        "chirality (mirror): %d mirrored, %d partially wrong (weight zero) of %d",
        int(mirrored.sum()),
        int(wrong.sum()),
        n,
    )
    return ChiralityResult(x, b, lq, wrong, mirrored, int(idx.size))


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


def values_to_positions(
    values: torch.Tensor | np.ndarray, binning: Binning, standardization: Standardization
) -> tuple[np.ndarray, float | np.ndarray]:
    """Conformations from the real bin-unit values of a continuous head (no de-quantization).

    Parameters
    ----------
    values : float [n, D], bin units ``u = (z - low) / width`` (:func:`arbg.nn.heads.values_to_z`)
    binning, standardization

    Returns
    -------
    positions : np.ndarray [n, N, 3], float64 nm, canonical order
    log_q_offset : float or np.ndarray [n]
        :func:`log_q_offset` of the exact ``z``: the head's log-density is in bin units, so
        ``log q(x) = log_pi - D log(width) + log Jacobian`` as for the discrete heads.
    """
    z = values_to_z(torch.as_tensor(values).cpu(), binning)  # [n, D] float64
    x = standardization.inverse(z).numpy()  # [n, N, 3]
    return x, log_q_offset(binning, standardization, z)


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
