"""KV-cached autoregressive sampling with exact proposal log-likelihoods.

Density convention
------------------
The model draws ``D = 3(n-1)`` bins ``b`` from tempered categoricals ``softmax(logits / tau)``;
each bin is de-quantized uniformly inside the bin (float64), giving standardized coordinates
``z``; :meth:`arbg.standardize.Standardization.inverse` scales by ``std_nm`` and places the last
atom from the centring constraint. The exact log-density of the returned conformation is

    log q(x) = log pi(b) - D log(width) + log_det_forward,

with ``log pi(b) = sum_j log softmax(logits_j / tau)[b_j]`` (nats, float64 accumulation),
``width`` the bin width in standardized units and ``log_det_forward = -D log(std_nm)``. It is a
density (nm^-D) on the *centred* configuration space, w.r.t. the Lebesgue measure on the first
``3(n-1)`` centred coordinates: the space in which ``exp(-u)`` of a translation-invariant energy is
normalisable. Importance weights ``-u - log q`` are then exact up to one global constant.

Only uniform de-quantization has a density: :func:`bins_to_positions` returns ``log_q_offset =
None`` (with a warning) for the point-mass modes ``"centre"`` / ``"mean"``, and :func:`generate`
refuses them.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from arbg.binning import Binning
from arbg.model import ARBG, KVCache, TokenFeatures
from arbg.standardize import Standardization
from arbg.target import chirality_signs

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
    "sample_bins",
    "teacher_forced_log_pi",
]

CHIRALITY_POLICIES = ("zero", "mirror", "none")


# --------------------------------------------------------------------------------------------------
# helpers


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


def _model_device(model: ARBG) -> torch.device:
    return next(model.parameters()).device


def make_generators(
    seed: int, device: torch.device | str = "cpu"
) -> tuple[torch.Generator, torch.Generator]:
    """Independent generators for the bin draws (on ``device``) and the in-bin offsets (CPU).

    Both are derived from ``seed`` through ``numpy.random.SeedSequence(seed).spawn(2)``.
    """
    s_bins, s_off = (int(s.generate_state(1, np.uint64)[0] >> np.uint64(1))
                     for s in np.random.SeedSequence(int(seed)).spawn(2))
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
) -> tuple[torch.Tensor, torch.Tensor]:
    dev = _model_device(model)
    bins = torch.empty(b, T, dtype=torch.long, device=dev)
    log_pi = torch.zeros(b, dtype=torch.float64, device=dev)
    start = torch.full((b, 1), model.start_id, dtype=torch.long, device=dev)
    if cache is not None:
        cache.reset()
    for j in range(T):
        if cache is not None:
            tok = start if j == 0 else bins[:, j - 1 : j]  # [b, 1]
            out, _ = model(tok, feats, kv_cache=cache)  # [b, 1, L]
        else:
            tok = torch.cat([start, bins[:, :j]], dim=1)  # [b, j+1], whole prefix recomputed
            out, _ = model(tok, feats.slice(0, j + 1))
            out = out[:, -1:]  # [b, 1, L]
        bj = model.head.sample(out, tau, generator)  # [b, 1]
        log_pi += model.head.log_prob(out, bj, tau)[:, 0].to(torch.float64)
        bins[:, j] = bj[:, 0]
    return bins, log_pi


def sample_bins(
    model: ARBG,
    n: int,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
    feats: TokenFeatures | None = None,
    batch_size: int = 1024,
    use_cache: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` bin sequences autoregressively from the tempered model.

    Token ``j`` is drawn from ``softmax(logits_j / tau)`` with the head's ``sample`` and the given
    generator; its log-probability under that tempered categorical is accumulated in float64.

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
    batch_size : int
        Internal chunk size (rows sampled in lock-step).
    use_cache : bool
        Incremental decoding with a preallocated KV cache (True) or recomputation of the whole
        prefix at every step (reference path, ~T/2 times more compute, same draws).
    device : str or torch.device, optional
    progress : bool
        tqdm progress bar over samples.

    Returns
    -------
    bins : LongTensor [n, T] (CPU)
    log_pi : float64 Tensor [n] (CPU), ``sum_j log p_tau(b_j | b_<j)`` in nats
    """
    if device is not None:
        model.to(device)
    dev = _model_device(model)
    f = _features(model, feats).to(dev)
    T = len(f)
    if generator is None:
        generator = torch.Generator(device=dev).manual_seed(0)
    from tqdm.auto import tqdm

    out_bins, out_lp = [], []
    cache: KVCache | None = None
    with tqdm(total=n, disable=not progress, desc="sampling", unit="sample") as bar:
        for s in range(0, n, batch_size):
            b = min(batch_size, n - s)
            if use_cache and (cache is None or cache.batch != b):
                cache = model.new_kv_cache(b, max_T=T)
            bins, lp = _sample_chunk(
                model, b, T, tau, generator, _rows(f, s, s + b), cache if use_cache else None
            )
            out_bins.append(bins.cpu())
            out_lp.append(lp.cpu())
            bar.update(b)
    if not out_bins:
        return torch.empty(0, T, dtype=torch.long), torch.empty(0, dtype=torch.float64)
    return torch.cat(out_bins), torch.cat(out_lp)


@torch.no_grad()
def teacher_forced_log_pi(
    model: ARBG,
    bins: torch.Tensor | np.ndarray,
    tau: float = 1.0,
    feats: TokenFeatures | None = None,
    batch_size: int = 1024,
) -> torch.Tensor:
    """``model.log_prob`` of stored bins [n, T] in chunks; float64 [n] on the CPU (nats)."""
    dev = _model_device(model)
    f = _features(model, feats).to(dev)
    bins = torch.as_tensor(np.asarray(bins) if not isinstance(bins, torch.Tensor) else bins)
    out = [
        model.log_prob(bins[s : s + batch_size].to(dev).long(), _rows(f, s, s + batch_size), tau)
        .cpu()
        for s in range(0, bins.shape[0], batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def bins_to_positions(
    bins: torch.Tensor | np.ndarray,
    binning: Binning,
    standardization: Standardization,
    generator: torch.Generator | None = None,
    mode: str = "uniform",
    bin_means: np.ndarray | None = None,
) -> tuple[np.ndarray, float | None]:
    """De-quantize bins to centred conformations.

    Parameters
    ----------
    bins : int [n, 3(N-1)]
    binning, standardization
    generator : torch.Generator (CPU)
        Source of the uniform in-bin offsets, drawn as one ``torch.rand([n, D], float64)``.
    mode : {"uniform", "centre", "mean"}
    bin_means : [L], for ``mode="mean"``

    Returns
    -------
    positions : np.ndarray [n, N, 3], float64 nm, canonical order, centre of geometry at 0
    log_q_offset : float or None
        ``-D log(width) + log_det_forward`` so that ``log q(x) = log_pi + log_q_offset`` (nm^-D
        density on the centred space, see the module docstring); ``None`` for the point-mass
        modes ``"centre"`` and ``"mean"``, which have no density (a warning is logged).
    """
    b = torch.as_tensor(bins).cpu().long()
    z = binning.decode(b, mode=mode, generator=generator, bin_means=bin_means)  # [n, D] float64
    x = standardization.inverse(z).numpy()  # [n, N, 3]
    if not Binning.has_density(mode):
        logger.warning("decode mode %r is a point mass: no log q is returned", mode)
        return x, None
    return x, log_q_offset(binning, standardization)


def log_q_offset(binning: Binning, standardization: Standardization) -> float:
    """``-D log(width) + log_det_forward`` (D = 3(N-1)): log q(x) = log_pi + this."""
    d = standardization.n_coords
    return -d * math.log(binning.width) + standardization.log_det_forward


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
        xm = -x[idx]
        zm = standardization.forward(xm)
        bm, n_clip = binning.encode(zm)  # bins of -x
        outside = np.any((zm < binning.low) | (zm >= binning.high), axis=1)
        lq_m = (
            teacher_forced_log_pi(model, bm, tau, feats, batch_size).numpy()
            + log_q_offset(binning, standardization)
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
        int(mirrored.sum()), int(wrong.sum()), n,
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
            "n": n, "tau": self.tau, "seed": self.seed, "chirality": self.chirality,
            "n_chirality_wrong": int(self.chirality_wrong.sum()),
            "n_mirrored": int(self.mirrored.sum()), "n_tokens": self.n_tokens,
            "n_teacher_forced": self.n_teacher_forced, "sampling_s": self.sampling_s,
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
    batch_size: int = 1024,
    use_cache: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
    generators: tuple[torch.Generator, torch.Generator] | None = None,
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
    batch_size, use_cache, device, progress
        See :func:`sample_bins`.
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
    bins, log_pi = sample_bins(
        model, n, tau, g_bins, feats, batch_size, use_cache, progress=progress
    )
    t1 = time.perf_counter()
    x, off = bins_to_positions(bins, binning, standardization, g_off)
    assert off is not None
    lp = log_pi.numpy()
    res = apply_chirality(
        x, bins.numpy(), lp + off, chirality_atoms, chirality, model=model, binning=binning,
        standardization=standardization, tau=tau, feats=feats, batch_size=batch_size,
    )
    batch = SampleBatch(
        coords=res.positions, bins=res.bins, log_q=res.log_q, log_pi=lp,
        chirality_wrong=res.wrong, mirrored=res.mirrored, tau=float(tau), seed=int(seed),
        chirality=chirality, n_tokens=int(bins.numel()), n_teacher_forced=res.n_teacher_forced,
        sampling_s=t1 - t0, wall_s=time.perf_counter() - t0,
    )
    logger.info("generated %d samples in %.2f s (%.1f/s)", n, batch.wall_s,
                n / max(batch.wall_s, 1e-12))
    return batch


# --------------------------------------------------------------------------------------------------
# SMC adapter


@dataclass
class ProposalState:
    """Per-population state of :class:`TransformerProposal`.

    Attributes
    ----------
    cache : KVCache with ``M`` rows
    bins : LongTensor [M, D] on the model device (columns ``>= n_done`` unset)
    z : float64 Tensor [M, D] (CPU), de-quantized standardized coordinates, drawn once
    log_q : np.ndarray [M] float64, total log q of the generated prefix (incl. Jacobians)
    n_done : int, coordinates generated
    """

    cache: KVCache
    bins: torch.Tensor
    z: torch.Tensor
    log_q: np.ndarray
    n_done: int = 0


class TransformerProposal:
    """:class:`arbg.smc.AutoregressiveProposal` backed by an :class:`ARBG` model.

    ``extend`` returns, per particle, the float64 log q increment of the new coordinates in nm:
    ``sum log p_tau(b_j | b_<j) - k log(width) - k log(std_nm)`` for ``k`` new coordinates, so the
    increments of a whole sequence sum to the exact ``log q(x)`` of :func:`generate` (the
    standardization Jacobian is spread over the coordinates rather than added by ``finish``;
    ``finish`` returns positions only, as the SMC protocol requires; the total is
    ``state.log_q``). In-bin offsets are drawn when a coordinate's bin is drawn and kept
    (reordered with the particle), so prefix energies and final positions see the same values.
    Generation is in canonical atom order; the last atom is never generated: ``finish`` places it
    from the centring constraint.

    Parameters
    ----------
    model, binning, standardization
    tau : float
    generator : torch.Generator on the model's device (bins)
    offset_generator : CPU torch.Generator (offsets); default a fresh one seeded from ``generator``
    feats : TokenFeatures, optional, [T] features
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
    ) -> None:
        self.model = model
        self.binning = binning
        self.standardization = standardization
        self.tau = float(tau)
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
        self._per_coord = -math.log(binning.width) - math.log(standardization.std_nm)

    def start(self, n_particles: int) -> ProposalState:
        m = int(n_particles)
        return ProposalState(
            cache=self.model.new_kv_cache(m, max_T=self.n_coords),
            bins=torch.zeros(m, self.n_coords, dtype=torch.long, device=self.device),
            z=torch.zeros(m, self.n_coords, dtype=torch.float64),
            log_q=np.zeros(m),
        )

    @torch.no_grad()
    def extend(self, state: ProposalState, n_coords: int) -> np.ndarray:
        """Generate the next ``n_coords`` coordinates of every particle; log q increment [M]."""
        j0, j1 = state.n_done, state.n_done + int(n_coords)
        if j1 > self.n_coords:
            raise ValueError(f"cannot generate beyond {self.n_coords} coordinates")
        m = state.bins.shape[0]
        lp = torch.zeros(m, dtype=torch.float64, device=self.device)
        head = self.model.head
        for j in range(j0, j1):
            if j == 0:
                tok = torch.full((m, 1), self.model.start_id, dtype=torch.long, device=self.device)
            else:
                tok = state.bins[:, j - 1 : j]
            out, _ = self.model(tok, self.feats, kv_cache=state.cache)  # [M, 1, L]
            bj = head.sample(out, self.tau, self.generator)  # [M, 1]
            lp += head.log_prob(out, bj, self.tau)[:, 0].to(torch.float64)
            state.bins[:, j] = bj[:, 0]
        if j1 > j0:
            state.z[:, j0:j1] = self.binning.decode(
                state.bins[:, j0:j1].cpu(), "uniform", self.offset_generator
            )
        state.n_done = j1
        inc = lp.cpu().numpy() + (j1 - j0) * self._per_coord
        state.log_q = state.log_q + inc
        return inc

    def coords(self, state: ProposalState) -> np.ndarray:
        """Generated coordinates [M, n_done] in nm (centred-frame values, flattened xyz).

        These are exactly the first ``n_done / 3`` atoms of the final :meth:`finish` positions;
        a prefix's absolute position is arbitrary, but prefix energies are translation invariant.
        """
        return (state.z[:, : state.n_done] * self.standardization.std_nm).numpy()

    def reorder(self, state: ProposalState, index: np.ndarray) -> ProposalState:
        """Reorder particles (cache rows, bins, offsets, log q) by ancestor ``index`` [M]."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        state.cache.reorder(idx)
        state.bins = state.bins.index_select(0, idx.to(self.device))
        state.z = state.z.index_select(0, idx)
        state.log_q = state.log_q[np.asarray(index)]
        return state

    def finish(self, state: ProposalState) -> np.ndarray:
        """Full conformations [M, N, 3] float64 nm (last atom from the centring constraint)."""
        if state.n_done != self.n_coords:
            raise ValueError(f"finish after {state.n_done} of {self.n_coords} coordinates")
        return self.standardization.inverse(state.z).numpy()

    def bins(self, state: ProposalState) -> np.ndarray:
        """Generated bins [M, n_done] int64 (CPU)."""
        return state.bins[:, : state.n_done].cpu().numpy()
