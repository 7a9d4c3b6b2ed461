"""Optimizers: Muon (momentum + Newton-Schulz orthogonalised updates) for 2-D weight matrices.

Recipe from Keller Jordan's Muon (the paper's choice: lr 0.02, Nesterov momentum 0.95, 5
Newton-Schulz steps; ``docs/references.md``); AdamW handles embeddings, head and norms.
"""

from __future__ import annotations

from typing import Any

import torch

# --------------------------------------------------------------------------------------------------
# Muon


@torch.no_grad()
def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal factor ``U V^T`` of ``G = U S V^T`` (quintic Newton-Schulz).

    The coefficients (3.4445, -4.7750, 2.0315) are those of Keller Jordan's Muon
    (https://kellerjordan.github.io/posts/muon/); they push singular values into roughly
    [0.7, 1.2] within 5 iterations rather than converging exactly to 1.

    Parameters
    ----------
    G : Tensor [rows, cols]
    steps : number of iterations.

    Returns
    -------
    Tensor [rows, cols] (float32).
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.float()
    transposed = X.shape[0] > X.shape[1]
    if transposed:
        X = X.T
    X = X / (X.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D weight matrices.

    Recipe of Keller Jordan's Muon (https://kellerjordan.github.io/posts/muon/,
    github.com/KellerJordan/Muon): SGD with Nesterov momentum whose update is replaced by its
    Newton-Schulz orthogonalization, scaled by ``max(1, rows/cols)**0.5``, with decoupled weight
    decay. The step is deterministic, so ranks with identical (all-reduced) gradients stay equal.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.ndim != 2:
                    raise ValueError("Muon only handles 2-D parameters")
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g)
                g = g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                update = newton_schulz(g, group["ns_steps"]).to(p.dtype)
                update *= max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1.0 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
