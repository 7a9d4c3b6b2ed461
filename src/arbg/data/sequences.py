"""Sequence lists and splits of a corpus: parsing, k-mer enumeration and sampling, the split by
sequence (never by frame) and per-sequence MD seeds; the corpus format constants."""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import re
from collections.abc import Iterable

import numpy as np

from arbg.chem.systems import (
    AMBER14_OBC1,
    FAST_IMPLICIT,
    validate_sequence,
)

log = logging.getLogger(__name__)


FORMAT = "arbg-corpus"
FORMAT_VERSION = 1
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard amino acids, one-letter codes
SPLITS = ("train", "val", "test")
MAX_ENUMERATED = 1_000_000  # all k-mers are listed only up to this many (20**4 = 160,000)
FORCE_FIELDS: dict[str, dict] = {
    "fast-implicit": dict(FAST_IMPLICIT),
    "amber14-obc1": dict(
        forcefield=AMBER14_OBC1, nonbonded="CutoffNonPeriodic", cutoff_nm=2.0, temperature_k=310.0
    ),
}

# ----------------------------------------------------------------------------- sequences


def parse_sequences(sequences: str | Iterable[str]) -> list[str]:
    """Validate a list of one-letter sequences (or a comma/space separated string).

    Returns the upper-cased sequences in the given order without duplicates. Raises ValueError
    for an empty list or a letter outside the 20 standard amino acids.
    """
    if isinstance(sequences, str):
        items = [s for s in re.split(r"[,\s]+", sequences) if s]
    else:
        items = list(sequences)
    if not items:
        raise ValueError(
            "empty sequence list: give one or more one-letter sequences (e.g. AA,AG) or --length L"
        )
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        seq = validate_sequence(item)
        if seq in seen:
            log.warning("sequence %s given more than once; using it once", seq)
            continue
        seen.add(seq)
        out.append(seq)
    return out


def kmer_sequences(length: int, sample: int | None = None, seed: int = 0) -> list[str]:
    """All sequences of `length` residues over the 20 standard amino acids, or a random sample.

    Parameters
    ----------
    length : residues per sequence (>= 1).
    sample : draw this many distinct sequences uniformly without replacement (None: all
        20**length of them, at most ``MAX_ENUMERATED``).
    seed : seed of the sample.

    Returns
    -------
    Sorted list of sequences.
    """
    if length < 1:
        raise ValueError(f"sequence length must be >= 1, got {length}")
    total = len(AMINO_ACIDS) ** length
    if sample is None:
        if total > MAX_ENUMERATED:
            raise ValueError(
                f"{total} sequences of length {length}: too many to list; "
                "draw a sample (--sample K)"
            )
        return ["".join(p) for p in itertools.product(AMINO_ACIDS, repeat=length)]
    if not 1 <= sample <= total:
        raise ValueError(
            f"--sample must be between 1 and {total} for length {length}, got {sample}"
        )
    rng = np.random.default_rng(seed)
    if total <= MAX_ENUMERATED:
        idx = rng.choice(total, size=sample, replace=False)
        seqs = {_decode_kmer(int(i), length) for i in idx}
    else:
        seqs = set()
        while len(seqs) < sample:
            letters = rng.integers(0, len(AMINO_ACIDS), size=length)
            seqs.add("".join(AMINO_ACIDS[i] for i in letters))
    return sorted(seqs)


def _decode_kmer(index: int, length: int) -> str:
    letters = []
    for _ in range(length):
        index, r = divmod(index, len(AMINO_ACIDS))
        letters.append(AMINO_ACIDS[r])
    return "".join(reversed(letters))


def validate_fractions(fractions: Iterable[float]) -> tuple[float, float, float]:
    """Check train/val/test fractions: three finite numbers >= 0 that sum to 1."""
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError) as e:
        raise ValueError(f"split fractions must be three numbers, got {fractions!r}") from e
    if len(fr) != 3:
        raise ValueError(f"give three split fractions (train val test), got {len(fr)}: {fr}")
    if not all(math.isfinite(f) and f >= 0 for f in fr):
        raise ValueError(f"split fractions must be finite and >= 0, got {fr}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fr} (sum {sum(fr):g})")
    return fr  # type: ignore[return-value]


def split_sequences(
    sequences: Iterable[str], fractions: Iterable[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Split sequences (not frames) into train/val/test, deterministically from `seed`.

    The sorted sequences are permuted by ``numpy.random.default_rng(seed)`` and cut into blocks
    of sizes from the fractions by largest-remainder rounding (ties go to the earlier split).
    Every sequence lands in exactly one split; each split's list is sorted.
    """
    fr = validate_fractions(fractions)
    seqs = sorted(set(sequences))
    n = len(seqs)
    raw = [n * f for f in fr]
    counts = [int(math.floor(r + 1e-9)) for r in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, count in zip(SPLITS, counts, strict=True):
        out[name] = sorted(seqs[i] for i in perm[start : start + count])
        start += count
    for name, f in zip(SPLITS, fr, strict=True):
        if f > 0 and not out[name] and n:
            log.warning(
                "split %s is empty: %d sequence(s) are too few for a fraction of %g", name, n, f
            )
    return out


def sequence_seed(seed: int, sequence: str) -> int:
    """The MD seed of one sequence: a hash of the corpus seed and the sequence (< 2**31 - 8)."""
    digest = hashlib.sha256(f"{seed}:{sequence}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % (2**31 - 8)
