"""Per-token conditioning features of the ARBG model: what coordinate each position predicts."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

__all__ = ["TokenFeatures", "token_features_for_system"]


@dataclass
class TokenFeatures:
    """Features of the coordinate predicted at each position; long tensors of shape [T] or [B, T].

    Attributes
    ----------
    axis : 0/1/2 for x/y/z
    atom_index : index of the atom in canonical order
    atom_type : atom-type id (``arbg.chem.systems`` vocabulary)
    residue_type : residue-type id
    residue_index : 0-based residue index
    """

    axis: torch.Tensor
    atom_index: torch.Tensor
    atom_type: torch.Tensor
    residue_type: torch.Tensor
    residue_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.axis.shape[-1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Name -> tensor."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def slice(self, start: int, stop: int) -> TokenFeatures:
        """Positions ``start:stop`` along the last (token) dimension."""
        return TokenFeatures(**{k: v[..., start:stop] for k, v in self.tensors().items()})

    def to(self, device: torch.device | str) -> TokenFeatures:
        """Move all tensors to ``device``."""
        return TokenFeatures(**{k: v.to(device) for k, v in self.tensors().items()})


def token_features_for_system(
    atom_type_id: np.ndarray,
    residue_type_id: np.ndarray,
    residue_index: np.ndarray,
    n_coords: int | None = None,
    coord_index: tuple[np.ndarray, np.ndarray] | None = None,
) -> TokenFeatures:
    """Token features of one system from per-atom arrays.

    By default coordinate ``j`` belongs to atom ``j // 3`` and axis ``j % 3`` (atom-major
    flattening, as in :meth:`arbg.nn.standardize.Standardization.forward`); ``coord_index`` gives
    the (atom, axis) of each token explicitly (the gauge frame skips six coordinates).

    Parameters
    ----------
    atom_type_id, residue_type_id, residue_index : np.ndarray, shape [n], int
    n_coords : int, optional
        Number of modelled coordinates, default ``3(n-1)``.
    coord_index : (atom [T], axis [T]) int arrays, optional
        :attr:`arbg.nn.standardize.Standardization.coord_index`; overrides ``n_coords``.

    Returns
    -------
    TokenFeatures with [T] long tensors, ``T = n_coords``.
    """
    n = len(atom_type_id)
    if coord_index is not None:
        atom, axis = (np.asarray(a, dtype=np.int64) for a in coord_index)
    else:
        if n_coords is None:
            n_coords = 3 * (n - 1)
        j = np.arange(n_coords)
        atom, axis = j // 3, j % 3
    if atom.size and atom.max() >= n:
        raise ValueError(f"{atom.size} coordinates need more than the {n} atoms given")

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.long)

    return TokenFeatures(
        axis=t(axis),
        atom_index=t(atom),
        atom_type=t(np.asarray(atom_type_id)[atom]),
        residue_type=t(np.asarray(residue_type_id)[atom]),
        residue_index=t(np.asarray(residue_index)[atom]),
    )
