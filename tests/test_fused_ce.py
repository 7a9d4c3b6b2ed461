"""Tests of arbg.nn.fused_ce (chunked cross-entropy = plain cross-entropy, values and gradients)
and of the trainer's speed features (gradient accumulation, tokens/s and MFU in the log)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arbg.nn.fused_ce import linear_cross_entropy
from arbg.nn.model import ARBG, ModelConfig, token_features_for_system

torch.set_num_threads(1)


def _inputs(seed: int = 0, B: int = 3, T: int = 11, C: int = 16, L: int = 50):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, C, generator=g, dtype=torch.float64).float().requires_grad_()
    w = (torch.randn(L, C, generator=g) * 0.5).requires_grad_()
    floor = torch.zeros(T, dtype=torch.long)
    floor[[2, 5]] = L // 2
    t = torch.randint(0, L, (B, T), generator=g)
    t = torch.maximum(t, floor)  # targets respect the floor
    t[0, 3] = t[2, 7] = -1  # ignored
    return h, w, t, floor


def _plain(h, w, t, floor):
    logits = h @ w.t()  # [B, T, L]
    below = torch.arange(w.shape[0])[None, :] < floor[:, None]  # [T, L]
    logits = logits.masked_fill(below, -math.inf)
    return F.cross_entropy(logits.reshape(-1, w.shape[0]), t.reshape(-1), ignore_index=-1)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_ce_equals_plain(chunk):
    h, w, t, floor = _inputs()
    ref = _plain(h, w, t, floor)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    loss = linear_cross_entropy(h, w, t, floor, chunk_rows=chunk)
    gh, gw = torch.autograd.grad(loss, (h, w))
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-7)
    assert gh[0, 3].abs().max() == 0  # ignored target: no gradient


@pytest.mark.parametrize("chunk", [None, 7])
def test_unchunked_ce_equals_masked_ce(chunk):
    """recompute=False (the CPU mode: log-softmax kept per chunk and turned into the gradient in
    place) and [B, T] floors."""
    h, w, t, floor = _inputs(seed=2)
    ref = _plain(h, w, t, floor)
    g_ref = torch.autograd.grad(ref, (h, w))
    for fl in (floor, floor.expand(t.shape)):  # [T] (single system) and [B, T] (transferable)
        loss = linear_cross_entropy(h, w, t, fl, chunk_rows=chunk, recompute=False)
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        for a, b in zip(torch.autograd.grad(loss, (h, w)), g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_chunked_ce_bf16_autocast_close_to_plain():
    h, w, t, floor = _inputs(seed=1)
    with torch.autocast("cpu", torch.bfloat16):
        loss = linear_cross_entropy(h, w, t, floor, chunk_rows=5)
    gh, gw = torch.autograd.grad(loss, (h, w))
    ref = _plain(h, w, t, floor)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    assert loss.dtype == torch.float32 and gh.dtype == h.dtype and gw.dtype == w.dtype
    assert abs(loss.item() - ref.item()) < 2e-2 * ref.item()
    assert (gh - gh_ref).norm() < 3e-2 * gh_ref.norm()
    assert (gw - gw_ref).norm() < 3e-2 * gw_ref.norm()


@pytest.mark.parametrize("chunked", [False, True])
def test_model_fused_loss_equals_logits_loss(chunked):
    rng = np.random.default_rng(0)
    feats = token_features_for_system(
        rng.integers(0, 30, 8), rng.integers(0, 20, 8), np.zeros(8, dtype=int)
    )
    torch.manual_seed(0)
    cfg = ModelConfig(n_bins=64, n_layer=1, n_embd=32, n_head=2, head_dim=16, max_atoms=16)
    model = ARBG(cfg, default_feats=feats)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fl = torch.zeros(len(feats), dtype=torch.long)
    fl[1] = 32
    model.set_bin_floor(fl)
    model.chunked_ce = chunked
    bins = torch.randint(32, 64, (4, len(feats)))
    tokens = model.shift_right(bins)
    out, ref = model(tokens, None, bins)
    g_ref = torch.autograd.grad(ref, list(model.parameters()), allow_unused=True)
    none, loss = model(tokens, None, bins, logits=False)
    g = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    assert none is None and out is not None
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(g, g_ref, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_trainer_grad_accumulation_and_mfu_log(tmp_path, aldp):
    """Accumulating 2 micro-batches of 4 gives the gradient of the batch of 8 (same frames);
    the training log carries tokens/s and model FLOPs."""
    from arbg.data.datasets import Dataset
    from arbg.train.config import TrainConfig
    from arbg.train.trainer import Trainer

    rng = np.random.default_rng(0)
    x = aldp.positions[None] + 0.02 * rng.standard_normal((40, aldp.n_atoms, 3))
    ds = Dataset(x.astype(np.float32), aldp, {"train": [0, 32], "val": [32, 40]})
    common = dict(
        preset="tiny",
        model_overrides={"n_layer": 1},
        n_bins=128,
        steps=2,
        batch_size=8,
        eval_every=0,
        eval_frames=8,
        checkpoint_every=0,
        log_every=1,
        device="cpu",
        optimizer="adamw",
        grad_clip=0.0,
        fused_ce=True,  # the GPU default, exercised here on the CPU
    )
    grads = []
    for accum in (1, 2):
        tr = Trainer(ds, tmp_path / f"a{accum}", TrainConfig(grad_accum=accum, **common), False)
        tr.accumulate_gradients()
        grads.append([p.grad.clone() for p in tr.model.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    tr = Trainer(ds, tmp_path / "run", TrainConfig(grad_accum=2, **common), False)
    tr.run()
    recs = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    train = [r for r in recs if r.get("event") == "train"]
    assert train and all(r["tokens_per_s"] > 0 for r in train)
    assert all(r["model_flops_per_token"] > 0 for r in train)
    assert all("mfu" in r for r in train)  # None on the CPU (no known peak), a number on GPUs
