"""Hyper-parameters of the ARBG model (:class:`ModelConfig`) and the size presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["PRESETS", "ModelConfig"]

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
        bins), ``"givt"`` (continuous Gaussian mixture). Configs without it load as ``"bins"``.
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
