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
    G : Tensor [rows, cols], or a batch [n, rows, cols] of same-shape matrices (one set of
        batched products instead of ``n``: what :class:`Muon` does per shape)
    steps : number of iterations.

    Returns
    -------
    Tensor of ``G``'s shape (float32).
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.float()
    transposed = X.shape[-2] > X.shape[-1]
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if transposed else X


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
            by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
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
                by_shape.setdefault(tuple(p.shape), []).append((p, g))
            for shape, items in by_shape.items():  # one batched Newton-Schulz per shape
                updates = newton_schulz(torch.stack([g for _, g in items]), group["ns_steps"])
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                for (p, _), update in zip(items, updates, strict=True):
                    if group["weight_decay"]:
                        p.mul_(1.0 - group["lr"] * group["weight_decay"])
                    p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)


# --------------------------------------------------------------------------------------------------
# optimizer set-up and throughput accounting


def build_optimizers(model: torch.nn.Module, cfg: Any) -> list[torch.optim.Optimizer]:
    """Muon for the 2-D matrices of the blocks, AdamW for the rest (or AdamW for everything).

    AdamW applies weight decay to matrices/embeddings (ndim >= 2) but not to norm gains.
    Every param group carries ``base_lr`` for the schedule. ``cfg``: a
    :class:`arbg.train.config.TrainConfig` (``optimizer``, ``lr_adamw``, ``lr_muon``,
    ``momentum_muon``, ``ns_steps``, ``betas``, ``weight_decay``).
    """
    muon_params: list[torch.nn.Parameter] = []
    if cfg.optimizer == "muon":
        muon_params = [p for p in model.blocks.parameters() if p.ndim == 2]
    elif cfg.optimizer != "adamw":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use 'muon' or 'adamw'")
    muon_ids = {id(p) for p in muon_params}
    rest = [p for p in model.parameters() if id(p) not in muon_ids]
    decay = [p for p in rest if p.ndim >= 2]
    no_decay = [p for p in rest if p.ndim < 2]
    adamw = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr_adamw},
            {"params": no_decay, "weight_decay": 0.0, "base_lr": cfg.lr_adamw},
        ],
        lr=cfg.lr_adamw,
        betas=tuple(cfg.betas),
        eps=1e-8,
    )
    opts: list[torch.optim.Optimizer] = [adamw]
    if muon_params:
        muon = Muon(
            [{"params": muon_params, "base_lr": cfg.lr_muon}],
            lr=cfg.lr_muon,
            momentum=cfg.momentum_muon,
            ns_steps=cfg.ns_steps,
            weight_decay=cfg.weight_decay,
        )
        opts.append(muon)
    return opts


#: peak dense bf16 FLOP/s of known GPUs (name substring -> FLOP/s), for the MFU
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "4090": 165e12,
}


def peak_flops(device: torch.device, peak_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of ``device`` (``peak_tflops`` if given; None where unknown)."""
    if peak_tflops:
        return float(peak_tflops) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def model_flops_per_token(model: torch.nn.Module, n_tokens: int) -> float:
    """Training FLOPs per token: ``6 N`` (N = parameters of the matrix products, i.e. without
    embedding tables) plus ``12 n_layer n_head head_dim T`` for attention (the PaLM convention,
    full ``T x T`` scores)."""
    c = model.config
    n = model.num_params(exclude_embeddings=True)
    return float(6 * n + 12 * c.n_layer * c.n_head * c.head_dim * n_tokens)
