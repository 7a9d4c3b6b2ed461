"""Sampling with exact log q: from a loaded model to (conformations, log q).

One path, read top to bottom: :func:`sample_bins` draws tokens through the one decode loop
(:class:`arbg.nn.decoder.Decoder`); :func:`log_q` assembles the exact log-density from the
drawn tokens (log pi, de-quantization, Jacobian); :func:`apply_chirality` applies the chirality
policy; :func:`generate` does all three for SNIS. The twisted SMC's proposal
(:class:`TransformerProposal`) draws through the same decoder a residue at a time and scores
every prefix with the same :func:`log_q`.

Density convention
------------------
The model draws ``D`` bins ``b`` from tempered categoricals ``softmax(logits / tau)``; each bin is
de-quantized uniformly inside the bin (float64), giving standardized coordinates ``z``;
:meth:`arbg.nn.coordinates.Standardization.inverse` maps them to a conformation in nm (centroid
frame, ``D = 3(n-1)``: scaled by ``std_nm``, the last atom placed from the centring constraint;
gauge frame, ``D = 3n - 6``: scattered into the gauge). The exact log-density of the returned
conformation is

    log q(x) = log pi(b) - D log(width) + log J(z),

with ``log pi(b) = sum_j log softmax(logits_j / tau)[b_j]`` (nats, float64 accumulation),
``width`` the bin width in standardized units and ``log J`` the Jacobian of
:meth:`arbg.nn.coordinates.Standardization.log_det`: ``-D log(std_nm)`` in the centroid frame,
plus ``-log(8 pi^2) - 2 log a - log c`` in the gauge frame. It is a density (nm^-D) on the
translation-reduced configuration space: the space in which ``exp(-u)`` of a
translation-invariant energy is normalisable. Importance weights ``-u - log q`` are then exact up
to one global constant. A continuous head (GIVT) draws ``u`` in bin units itself (no
de-quantization); its ``log pi`` is a density in bin units, so the same formula holds.

De-quantization is always uniform inside the bin, the only choice with a density.

Atom order
----------
Everything here is in the system's canonical atom order (the order of ``PeptideSystem.topology``
and of ``topology.pdb`` in a run directory). Use :meth:`SampleBatch.original_order` for the input
(build) order.

Chirality
---------
A Cartesian model can emit D-residues; the force field is mirror symmetric, so the target is
``exp(-u)`` restricted to all-L conformations. For a residue with atoms (N, CA, C, CB) the signed
volume is ``V = ((N - CA) x (C - CA)) . (CB - CA)``; **L-amino acids have V > 0** (checked
against the L-alanine template of pdbfixer and every residue of OpenMM's villin ``test.pdb``,
``tests/test_target.py``). Policies (:func:`apply_chirality`):

* ``"zero"`` (default): a sample with any D C-alpha gets weight zero (flag ``chirality_wrong``;
  exact, self-normalization absorbs the rejection).
* ``"mirror"``: a sample whose *every* chiral residue is D is replaced by ``y = -x``. The stored
  proposal is then ``Y = M(X)``, whose density at an all-L ``y`` is ``q(y) + q(-y)``; this holds
  for every fully-L or fully-D draw (not only the mirrored ones), so a second teacher-forced pass
  on the re-encoded ``-x`` is run for all of them. Partially wrong samples still get weight zero.
  Keeping the original ``log q`` for a mirrored sample (the published shortcut) is biased and is
  not offered. The teacher-forced pass is float32: the policy needs float32 draws.
* ``"none"``: no check (for targets without chirality).

The twisted SMC applies the ``"zero"`` policy early: it kills a particle at the first residue
boundary where a completed residue is D (:func:`arbg.sampling.smc.twisted_smc`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from arbg.nn.coordinates import Binning, Standardization
from arbg.nn.decoder import Decoder, as_dtype, auto_batch_size
from arbg.nn.heads import values_to_z
from arbg.nn.model import ARBG, TokenFeatures

logger = logging.getLogger(__name__)

__all__ = [
    "CHIRALITY_POLICIES",
    "ChiralityResult",
    "ProposalState",
    "SampleBatch",
    "TransformerProposal",
    "apply_chirality",
    "chirality_signs",
    "generate",
    "generate_mixture",
    "log_q",
    "log_q_at",
    "make_generators",
    "resolve_batch_size",
    "sample_bins",
    "teacher_forced_log_pi",
    "wrong_chirality",
]

CHIRALITY_POLICIES = ("zero", "mirror", "none")

# --------------------------------------------------------------------------------------------------
# helpers


def _model_device(model: ARBG) -> torch.device:
    return next(model.parameters()).device


def _features(model: ARBG, feats: TokenFeatures | None) -> TokenFeatures:
    f = feats if feats is not None else model.default_features()
    if f is None:
        raise ValueError("the model has no default features; pass feats")
    return f


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


def resolve_batch_size(
    model: ARBG,
    batch_size: int | str,
    n_tokens: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str = torch.float32,
) -> int:
    """``batch_size`` as an int: ``"auto"`` is the largest decode batch that fits the free
    memory of the model's device (:func:`arbg.nn.decoder.auto_batch_size`; capped at
    :data:`arbg.nn.decoder.CPU_MAX_AUTO_BATCH` on the CPU)."""
    if isinstance(batch_size, str):
        if batch_size != "auto":
            if not batch_size.isdigit():
                raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
            batch_size = int(batch_size)
        else:
            dev = torch.device(device) if device is not None else _model_device(model)
            T = n_tokens if n_tokens is not None else len(_features(model, None))
            return auto_batch_size(model.config, T, dev, as_dtype(dtype))
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


# --------------------------------------------------------------------------------------------------
# tokens


def sample_bins(
    model: ARBG,
    n: int,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
    feats: TokenFeatures | None = None,
    batch_size: int | str = 1024,
    device: torch.device | str | None = None,
    progress: bool = False,
    dtype: torch.dtype | str = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Draw ``n`` token sequences autoregressively from the tempered model.

    Token ``j`` is drawn from the tempered conditional (``softmax(logits_j / tau)`` for the bins
    head, by inverse CDF from one float64 uniform, :func:`arbg.nn.heads.draw_categorical`; see
    :mod:`arbg.nn.heads` for the mixture heads) with the given generator; its log-probability
    under that tempered conditional (float32 log-softmax of the very logits drawn from) is
    accumulated in float64. A continuous head (``model.head.continuous``, GIVT) draws real
    values in bin units; their bins are the next tokens.

    Parameters
    ----------
    model : ARBG or BoundModel
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
        Rows decoded in lock-step; ``"auto"``: :func:`resolve_batch_size`.
    device : str or torch.device, optional
    progress : bool
        tqdm progress bar over samples.
    dtype : torch.float32 or torch.bfloat16 (or "float32" / "bf16")
        Precision of the matrix work; log pi is exact for the draws made either way.

    Returns
    -------
    bins : LongTensor [n, T] (CPU)
    log_pi : float64 Tensor [n] (CPU), ``sum_j log p_tau(x_j | x_<j)`` in nats (a log-density
        in bin units for a continuous head)
    values : float64 Tensor [n, T] (CPU), the bin-unit values of a continuous head, else None
    """
    from tqdm.auto import tqdm

    dtype = as_dtype(dtype)
    if device is not None:
        model.to(device)
    dev = _model_device(model)
    f = _features(model, feats).to(dev)
    T = len(f)
    batch_size = resolve_batch_size(model, batch_size, T, dev, dtype)
    if generator is None:
        generator = torch.Generator(device=dev).manual_seed(0)
    out_bins, out_lp, out_val = [], [], []  # per chunk, on the CPU
    decoder: Decoder | None = None
    # the bar counts tokens (a batch takes minutes on a loaded CPU) in integers, shown as
    # samples (unit_scale 1/T): no float drift past the total; redrawn every 2 s
    with tqdm(
        total=n * T,
        disable=not progress,
        desc="sampling",
        unit="sample",
        unit_scale=1.0 / max(T, 1),
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}, {rate_fmt}]",
        mininterval=2,
    ) as bar:
        for s in range(0, n, batch_size):
            b = min(batch_size, n - s)
            if decoder is None or decoder.B != b or f.axis.dim() == 2:  # one per chunk size
                decoder = Decoder(model, b, _rows(f, s, s + b), tau, dtype)
            tick = (lambda _, b=b: bar.update(b)) if progress else None
            bins, lp, val = decoder.run(generator, tick=tick)
            out_bins.append(bins.cpu())
            out_lp.append(lp.cpu())
            if val is not None:
                out_val.append(val.cpu())
    if not out_bins:
        values = torch.empty(0, T, dtype=torch.float64) if model.head.continuous else None
        return torch.empty(0, T, dtype=torch.long), torch.empty(0, dtype=torch.float64), values
    values = torch.cat(out_val) if out_val else None
    return torch.cat(out_bins), torch.cat(out_lp), values


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
    bf16 = as_dtype(dtype) == torch.bfloat16
    out = []
    for s in range(0, bins.shape[0], batch_size):
        with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            lp = model.log_prob(
                bins[s : s + batch_size].to(dev).long(), _rows(f, s, s + batch_size), tau
            )
        out.append(lp.cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# log q: the one assembly


def log_q(
    log_pi: Any,
    binning: Binning,
    standardization: Standardization,
    z: Any = None,
    n_tokens: int | None = None,
) -> np.ndarray:
    """Exact ``log q`` (nm^-D) of conformations, or of the prefixes of their first ``n_tokens``
    tokens: ``log pi - k log(width) + log J_k(z)`` (module docstring).

    Parameters
    ----------
    log_pi : [n] float64, ``sum_j log p_tau`` of the ``k`` tokens (nats)
    binning, standardization
    z : [n, D] standardized coordinates; required in the gauge frame, whose Jacobian
        ``-2 log a - log c`` depends on the conformation
    n_tokens : int, the prefix length ``k`` (default all ``D``); the gauge-frame Jacobian joins
        once its two tokens are drawn (:meth:`arbg.nn.coordinates.Standardization.log_det`)

    Returns
    -------
    np.ndarray [n] float64
    """
    k = standardization.n_coords if n_tokens is None else int(n_tokens)
    lp = np.asarray(log_pi.numpy() if isinstance(log_pi, torch.Tensor) else log_pi, np.float64)
    return lp + (-k * math.log(binning.width) + standardization.log_det(z, n_tokens=k))


def log_q_at(
    model: ARBG,
    binning: Binning,
    standardization: Standardization,
    positions: np.ndarray,
    tau: float = 1.0,
    feats: TokenFeatures | None = None,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact log q of a model at conformations it did not necessarily draw: encode them into the
    model's bins, one teacher-forced pass, :func:`log_q`.

    Parameters
    ----------
    model, binning, standardization, tau, feats : the proposal
    positions : [n, N, 3] float64 nm, canonical order, centred (as :func:`generate` returns)
    batch_size : sequences per teacher-forced pass

    Returns
    -------
    log_q : [n] float64 (nm^-D); ``-inf`` where a coordinate falls outside the bin range (the
        density is zero there). For the model's own draws it equals the log q they were drawn
        with (to float32 rounding of the pass).
    bins : [n, D] int64, the bins of ``positions`` (end bins where outside)
    """
    z = standardization.forward(np.asarray(positions, dtype=np.float64))
    outside = np.any((z < binning.low) | (z >= binning.high), axis=1)
    bins, _ = binning.encode(np.where(outside[:, None], 0.0, z))
    if outside.any():
        logger.info(
            "log q at %d of %d conformations outside the bin range: 0", outside.sum(), len(z)
        )
    lp = teacher_forced_log_pi(model, bins, tau, feats, batch_size)
    lq = log_q(lp, binning, standardization, z)
    lq[outside] = -np.inf
    return lq, np.asarray(bins, dtype=np.int64)


def to_conformations(
    bins: torch.Tensor,
    values: torch.Tensor | None,
    binning: Binning,
    standardization: Standardization,
    generator: torch.Generator | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Conformations [n, N, 3] float64 nm and their standardized coordinates z [n, D].

    Bins are de-quantized uniformly in the bin (offsets drawn as one ``torch.rand([n, D],
    float64)`` from the CPU ``generator``); a continuous head's ``values`` are used as they are.
    """
    if values is None:
        z = binning.decode(torch.as_tensor(bins).cpu().long(), generator=generator)
    else:
        z = values_to_z(torch.as_tensor(values).cpu(), binning)
    return standardization.inverse(z).numpy(), z.numpy()


# --------------------------------------------------------------------------------------------------
# chirality


def chirality_signs(x: np.ndarray, chirality_atoms: np.ndarray) -> np.ndarray:
    """Sign of ``((N - CA) x (C - CA)) . (CB - CA)`` per residue: +1 = L, -1 = D.

    Parameters
    ----------
    x : np.ndarray, shape (B, n, 3) (nm; only relative positions matter)
    chirality_atoms : np.ndarray, shape (r, 4), int
        (N, CA, C, CB) per residue; rows with a negative index (Gly) give 0.

    Returns
    -------
    np.ndarray, shape (B, r), int8
        +1 (L), -1 (D), 0 (no stereocentre, or degenerate / non-finite coordinates).
    """
    x = np.asarray(x, dtype=np.float64)
    idx = np.asarray(chirality_atoms, dtype=np.int64).reshape(-1, 4)
    out = np.zeros((x.shape[0], idx.shape[0]), dtype=np.int8)
    valid = np.all(idx >= 0, axis=1)
    if not valid.any():
        return out
    i = idx[valid]
    ca = x[:, i[:, 1]]
    vol = np.sum(np.cross(x[:, i[:, 0]] - ca, x[:, i[:, 2]] - ca) * (x[:, i[:, 3]] - ca), -1)
    out[:, valid] = np.sign(np.nan_to_num(vol, nan=0.0)).astype(np.int8)
    return out


def wrong_chirality(x: np.ndarray, chirality_atoms: np.ndarray) -> np.ndarray:
    """True where any residue with a stereocentre is D (signed volume < 0), shape (B,)."""
    return np.any(chirality_signs(x, chirality_atoms) < 0, axis=1)


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
    log_q_drawn: np.ndarray,
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
    log_q_drawn : [n] float64, exact log q of ``positions`` (:func:`log_q`)
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
    lq = np.array(log_q_drawn, dtype=np.float64)
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
        # q(-x) needs its own teacher-forced pass on the bins of -x: the model is not mirror
        # equivariant (standardization means, bin grid and weights are not), so q(-x) != q(x)
        logger.info("chirality (mirror): scoring q(-x) of %d samples (teacher-forced)", idx.size)
        xm = -x[idx]
        lq_m, bm = log_q_at(model, binning, standardization, xm, tau, feats, batch_size)
        lq[idx] = np.logaddexp(lq[idx], lq_m)
        md = all_d[idx]
        x[idx[md]] = xm[md]
        b[idx[md]] = bm[md]
    wrong = wrong & ~all_d
    logger.info(
        "chirality (mirror): %d mirrored, %d partially wrong (weight zero) of %d",
        int(mirrored.sum()),
        int(wrong.sum()),
        n,
    )
    return ChiralityResult(x, b, lq, wrong, mirrored, int(idx.size))


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
    member : [n] int, the member of a mixture that drew each sample (:func:`generate_mixture`;
        None for one model)
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
    member: np.ndarray | None = None
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
    device: torch.device | str | None = None,
    progress: bool = False,
    generators: tuple[torch.Generator, torch.Generator] | None = None,
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
    batch_size, device, progress, dtype
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
    if chirality == "mirror" and model.head.continuous:
        raise ValueError(
            f"chirality='mirror' re-scores bins: not available for the continuous "
            f"{model.config.head!r} head (use 'zero')"
        )
    if chirality == "mirror" and as_dtype(dtype) != torch.float32:
        raise ValueError(
            "chirality='mirror' scores -x with a float32 teacher-forced pass, so the draws must "
            "be float32 too (a bf16 draw and a float32 score are two models): use dtype float32 "
            "or chirality 'zero'"
        )
    bins, log_pi, values = sample_bins(
        model, n, tau, g_bins, feats, batch_size, progress=progress, dtype=dtype
    )
    t1 = time.perf_counter()
    x, z = to_conformations(bins, values, binning, standardization, g_off)
    lp = log_pi.numpy()
    res = apply_chirality(
        x,
        bins.numpy(),
        log_q(lp, binning, standardization, z),
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


def generate_mixture(
    members: list[Any],
    weights: np.ndarray | list[float],
    n: int,
    tau: float = 1.0,
    seed: int = 0,
    *,
    chirality_atoms: np.ndarray | None = None,
    chirality: str = "zero",
    batch_size: int | str = 1024,
    device: torch.device | str | None = None,
    progress: bool = False,
    dtype: torch.dtype | str = torch.float32,
) -> SampleBatch:
    """Draw ``n`` conformations from the mixture ``q = sum_k w_k q_k`` with its exact log q.

    Member ``k`` draws ``n_k`` of the samples (``n w_k`` rounded by largest remainders: a
    deterministic, stratified allocation) with its own seed; every sample is then scored by
    every member (:func:`log_q_at`, one teacher-forced pass per other member), and
    ``log q(x) = logsumexp_k(log w_k + log q_k(x))``. Weighting by this mixture density is the
    balance heuristic of multiple importance sampling (Veach & Guibas 1995; Elvira et al.,
    Statist. Sci. 2019): SNIS stays consistent and its weights are bounded by those of the best
    member wherever the target is, so members trained apart (other seeds, other stopping
    points, fine-tuned) cover for each other's thin tails.

    Parameters
    ----------
    members : objects with ``model``, ``binning``, ``standardization``, ``feats`` (e.g.
        checkpoints) over the same atoms and the same frame (gauge atoms); binnings may differ
    weights : [K] non-negative mixture weights (normalised here)
    n, tau, seed, chirality_atoms, batch_size, device, progress, dtype : as :func:`generate`;
        member ``k`` draws with a seed derived from ``(seed, k)``
    chirality : ``"zero"`` or ``"none"`` (``"mirror"`` would need ``q_k(-x)`` of every member)

    Returns
    -------
    SampleBatch: ``bins`` in the first member's binning; ``log_q`` the mixture's
    """
    t0 = time.perf_counter()
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(members) != w.size or w.size == 0 or np.any(w < 0) or not np.isfinite(w).all():
        raise ValueError(f"a mixture needs one non-negative weight per member, got {weights!r}")
    if w.sum() <= 0:
        raise ValueError("the mixture weights sum to zero")
    if chirality == "mirror":
        raise ValueError(
            "chirality='mirror' is not available for a mixture of proposals (use 'zero')"
        )
    w = w / w.sum()
    frames = {
        (m.standardization.frame, tuple(m.standardization.gauge_atoms or ())) for m in members
    }
    atoms = {m.standardization.n_atoms for m in members}
    if len(frames) > 1 or len(atoms) > 1:
        raise ValueError(
            f"mixture members must share the atoms and the frame, got frames {sorted(frames)} "
            f"and atom counts {sorted(atoms)}"
        )
    share = n * w
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(-(share - counts), kind="stable")[: n - counts.sum()]] += 1
    draws: list[tuple[int, SampleBatch]] = []
    for k, (m, n_k) in enumerate(zip(members, counts, strict=True)):
        if n_k == 0:
            continue
        seed_k = int(np.random.default_rng([int(seed), k]).integers(2**31))
        b = generate(
            m.model, m.binning, m.standardization, int(n_k), tau, seed_k,
            feats=m.feats, chirality_atoms=chirality_atoms, chirality=chirality,
            batch_size=batch_size, device=device, progress=progress, dtype=dtype,
        )  # fmt: skip
        draws.append((k, b))
    x = np.concatenate([b.coords for _, b in draws])
    source = np.concatenate([np.full(len(b), k) for k, b in draws])
    log_qk = np.full((len(members), len(x)), -np.inf)
    for k, m in enumerate(members):
        if w[k] == 0:
            continue
        mine = source == k
        if mine.any():  # its own draws: the log q they were drawn with
            log_qk[k, mine] = dict(draws)[k].log_q
        if (~mine).any():
            bs = resolve_batch_size(m.model, batch_size, m.standardization.n_coords,
                                    _model_device(m.model), dtype)  # fmt: skip
            log_qk[k, ~mine], _ = log_q_at(
                m.model, m.binning, m.standardization, x[~mine], tau, m.feats, bs
            )
    with np.errstate(divide="ignore"):
        lq = np.logaddexp.reduce(np.log(w)[:, None] + log_qk, axis=0)
    first = members[0]
    z0 = first.standardization.forward(x)
    bins0, _ = first.binning.encode(np.clip(z0, first.binning.low, first.binning.high - 1e-12))
    batch = SampleBatch(
        coords=x,
        bins=np.asarray(bins0, dtype=np.int64),
        log_q=lq,
        log_pi=np.concatenate([b.log_pi for _, b in draws]),
        chirality_wrong=np.concatenate([b.chirality_wrong for _, b in draws]),
        mirrored=np.zeros(len(x), dtype=bool),
        tau=float(tau),
        seed=int(seed),
        chirality=chirality,
        n_tokens=sum(b.n_tokens for _, b in draws),
        n_teacher_forced=int(sum((source != k).sum() for k in range(len(members)) if w[k] > 0)),
        sampling_s=sum(b.sampling_s for _, b in draws),
        wall_s=time.perf_counter() - t0,
        member=source,
    )
    logger.info(
        "mixture of %d: %s samples per member, %d teacher-forced scorings",
        *(len(members), counts.tolist(), batch.n_teacher_forced),
    )
    return batch


# --------------------------------------------------------------------------------------------------
# the twisted SMC's proposal


@dataclass
class ProposalState:
    """Per-population state of :class:`TransformerProposal`.

    Attributes
    ----------
    decoder : Decoder with ``M`` rows (its bins, log pi and KV cache)
    z : float64 Tensor [M, D] (CPU), de-quantized standardized coordinates, drawn once
    log_q : np.ndarray [M] float64, :func:`log_q` of the generated prefix
    n_units : int, SMC units generated (3 per atom)
    """

    decoder: Decoder
    z: torch.Tensor
    log_q: np.ndarray
    n_units: int = 0


class TransformerProposal:
    """:class:`arbg.sampling.smc.AutoregressiveProposal` backed by an :class:`ARBG` model.

    ``extend`` draws the next atoms of every particle through :class:`arbg.nn.decoder.Decoder`
    and returns the float64 increment of :func:`log_q` of the prefix, so the increments of a whole
    sequence sum to the ``log q(x)`` of :func:`generate` (``state.log_q`` holds the total);
    ``finish`` returns positions only, as the SMC protocol requires. In-bin offsets are drawn when
    a coordinate's bin is drawn and kept (reordered with the particle), so prefix energies and
    final positions see the same values; a continuous head (GIVT) draws the values themselves.
    Generation is in canonical atom order; the last atom (centroid frame) is never generated:
    ``finish`` places it from the centring constraint.

    Parameters
    ----------
    model, binning, standardization
    tau : float
    generator : torch.Generator on the model's device (bins)
    offset_generator : CPU torch.Generator (offsets); default a fresh one seeded from ``generator``
    feats : TokenFeatures, optional, [T] features
    dtype : torch.float32 or torch.bfloat16, the decoder's matrix precision
    """

    def __init__(
        self,
        model: ARBG,
        binning: Binning,
        standardization: Standardization,
        tau: float = 1.0,
        generator: torch.Generator | None = None,
        offset_generator: torch.Generator | None = None,
        feats: TokenFeatures | None = None,
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        self.model = model
        self.binning = binning
        self.standardization = standardization
        self.tau = float(tau)
        self.dtype = as_dtype(dtype)
        self.device = _model_device(model)
        self.feats = _features(model, feats).to(self.device)
        self.n_coords = standardization.n_coords
        if len(self.feats) != self.n_coords:
            raise ValueError(f"features cover {len(self.feats)} tokens, need {self.n_coords}")
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(0)
        self.generator = generator
        if offset_generator is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=self.device))
            offset_generator = torch.Generator().manual_seed(seed)
        self.offset_generator = offset_generator
        self._gauge = standardization.frame == "gauge"

    def start(self, n_particles: int) -> ProposalState:
        m = int(n_particles)
        return ProposalState(
            decoder=Decoder(self.model, m, self.feats, self.tau, self.dtype),
            z=torch.zeros(m, self.n_coords, dtype=torch.float64),
            log_q=np.zeros(m),
        )

    @property
    def n_units(self) -> int:
        """Length of a full sequence in the SMC's units (3 per atom; see :meth:`extend`)."""
        n = self.standardization.n_atoms
        return 3 * n if self._gauge else 3 * (n - 1)

    def extend(self, state: ProposalState, n_coords: int) -> np.ndarray:
        """Generate the next ``n_coords / 3`` atoms of every particle; log q increment [M].

        ``n_coords`` counts 3 per atom (the SMC's unit); the model tokens generated are the
        modelled coordinates of those atoms (all three in the centroid frame, fewer for the gauge
        atoms in the gauge frame).
        """
        u0, u1 = state.n_units, state.n_units + int(n_coords)
        if u1 > self.n_units or (u1 % 3 and self._gauge):
            raise ValueError(f"cannot generate {n_coords} more units after {u0} of {self.n_units}")
        dec = state.decoder
        j0 = dec.n_done
        j1 = self.standardization.coords_before_atom(u1 // 3) if self._gauge else u1
        dec.decode(j1 - j0, self.generator)
        if j1 > j0:
            if dec.values is not None:  # the value is the coordinate: no in-bin offset
                state.z[:, j0:j1] = values_to_z(dec.values[:, j0:j1].cpu(), self.binning)
            else:
                state.z[:, j0:j1] = self.binning.decode(
                    dec.bins[:, j0:j1].cpu(), self.offset_generator
                )
        state.n_units = u1
        lq = log_q(dec.log_pi.cpu(), self.binning, self.standardization, state.z.numpy(), j1)
        inc = lq - state.log_q
        state.log_q = lq
        return inc

    def coords(self, state: ProposalState) -> np.ndarray:
        """Generated atoms [M, n_units] in nm (flattened xyz of the first ``n_units / 3`` atoms).

        These are exactly those atoms of the final :meth:`finish` positions; a prefix's absolute
        position is arbitrary, but prefix energies are translation invariant.
        """
        n_done = state.decoder.n_done
        if not self._gauge:
            return (state.z[:, :n_done] * self.standardization.std_nm).numpy()
        k = state.n_units // 3
        z = state.z.clone()
        z[:, n_done:] = 0.0
        x = self.standardization.inverse(z.numpy())  # [M, n, 3] gauge frame
        return x[:, :k].reshape(x.shape[0], 3 * k)

    def reorder(self, state: ProposalState, index: np.ndarray) -> ProposalState:
        """Reorder particles (decoder rows, offsets, log q) by ancestor ``index`` [M]."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        state.decoder.reorder(idx)
        state.z = state.z.index_select(0, idx)
        state.log_q = state.log_q[np.asarray(index)]
        return state

    def finish(self, state: ProposalState) -> np.ndarray:
        """Full conformations [M, N, 3] float64 nm (last atom from the centring constraint)."""
        if state.decoder.n_done != self.n_coords:
            raise ValueError(f"finish after {state.decoder.n_done} of {self.n_coords} coordinates")
        return self.standardization.inverse(state.z).numpy()

    def bins(self, state: ProposalState) -> np.ndarray:
        """Generated bins [M, n_done] int64 (CPU)."""
        return state.decoder.bins[:, : state.decoder.n_done].cpu().numpy()
