"""Tests of arbg.nn.decoder, the one decode loop: its static KV cache and sync-free step (the
structure CUDA graphs capture) against the teacher-forced forward, decoding in pieces with row
reordering (the twisted SMC), per-row features, bf16 log q against a teacher-forced bf16 pass,
the inverse-CDF draw, and the auto batch size on a fake memory budget. CPU only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arbg.chem.systems import N_ATOM_TYPES, N_RESIDUE_TYPES
from arbg.nn.conditioning import BoundModel, ConditioningConfig, TransferableARBG, encode_system
from arbg.nn.coordinates import Binning
from arbg.nn.decoder import CPU_MAX_AUTO_BATCH, Decoder, auto_batch_size, decode_bytes_per_row
from arbg.nn.heads import draw_categorical
from arbg.nn.model import ARBG, ModelConfig, token_features_for_system
from arbg.sampling.sampler import resolve_batch_size, sample_bins, teacher_forced_log_pi

torch.set_num_threads(1)
N_BINS = 512


def _model(seed: int = 0, n_atoms: int = 10, floor: bool = False, rope: bool = True) -> ARBG:
    """A small ARBG with all weights perturbed (the init is uniform / identity)."""
    rng = np.random.default_rng(seed)
    feats = token_features_for_system(
        rng.integers(0, N_ATOM_TYPES, n_atoms),
        rng.integers(0, N_RESIDUE_TYPES, n_atoms),
        np.sort(rng.integers(0, 3, n_atoms)),
    )
    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_bins=N_BINS,
        n_layer=2,
        n_embd=64,
        n_head=4,
        head_dim=16,
        max_atoms=32,
        rope=rope,
        n_atom_types=N_ATOM_TYPES,
        n_residue_types=N_RESIDUE_TYPES,
    )
    model = ARBG(cfg, default_feats=feats)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.head.proj.weight.mul_(5.0)  # peaked conditionals: a real test of the draws
    if floor:
        fl = torch.zeros(len(feats), dtype=torch.long)
        fl[[1, 4]] = N_BINS // 2
        model.set_bin_floor(fl)
    return model.eval()


def _same_draws(b1, lp1, b2, lp2, min_rows: float = 0.9) -> None:
    """Same uniforms and the same logits up to float32 rounding: the same bins, except where a
    uniform falls within rounding (~1e-7) of a CDF step; then log pi agrees on equal rows."""
    same = (b1 == b2).all(dim=1)
    assert same.float().mean() >= min_rows, same.float().mean()
    np.testing.assert_allclose(lp1[same].numpy(), lp2[same].numpy(), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("tau", [1.0, 0.7])
@pytest.mark.parametrize("floor,rope", [(False, True), (True, True), (True, False)])
def test_decoder_log_pi_is_the_teacher_forced_density(tau, floor, rope):
    """The one decode loop against the reference: the teacher-forced ``ARBG.forward``."""
    model = _model(floor=floor, rope=rope)
    bins, lp, values = sample_bins(model, 40, tau, torch.Generator().manual_seed(3), batch_size=16)
    assert values is None and lp.dtype == torch.float64 and len(torch.unique(bins)) > 20
    if floor:
        assert (bins[:, [1, 4]] >= N_BINS // 2).all()
    tf = teacher_forced_log_pi(model, bins, tau).numpy()
    np.testing.assert_allclose(lp.numpy(), tf, rtol=1e-6, atol=1e-4)


def test_decoder_draws_follow_the_conditionals():
    """First token: the empirical bin frequencies match softmax(logits / tau) of the forward."""
    model = _model()
    n, tau = 4000, 0.8
    bins, _, _ = sample_bins(model, n, tau, torch.Generator().manual_seed(0), batch_size=1000)
    with torch.no_grad():
        logits, _ = model(torch.full((1, 1), model.start_id))
    p = torch.softmax(logits[0, 0].double() / tau, -1)
    freq = torch.bincount(bins[:, 0], minlength=N_BINS).double() / n
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 5 * sigma + 1e-3).all()


def test_masked_bucket_step_equals_exact_keys():
    """The graph-shaped step (keys of a whole bucket under a mask) = exactly the keys so far."""
    model = _model(floor=True)
    res = []
    for bucket in (1, 8, 64):
        dec = Decoder(model, 12, tau=0.9, bucket=bucket, graphs=False)
        res.append(dec.run(torch.Generator().manual_seed(7))[:2])
    for b, lp in res[1:]:
        _same_draws(b, lp, *res[0], min_rows=0.8)
        tf = teacher_forced_log_pi(model, b, 0.9).numpy()
        np.testing.assert_allclose(lp.numpy(), tf, rtol=1e-6, atol=1e-4)


def test_decoder_reuses_its_buffers():
    model = _model()
    dec = Decoder(model, 8, graphs=False)
    g = torch.Generator().manual_seed(1)
    b1, lp1, _ = dec.run(g)
    b2, lp2, _ = dec.run(g)  # next chunk: new draws, same cache
    g = torch.Generator().manual_seed(1)
    b3, lp3, _ = Decoder(model, 8, graphs=False).run(g)
    assert torch.equal(b1, b3) and torch.equal(lp1, lp3)
    assert not torch.equal(b1, b2)
    np.testing.assert_allclose(lp2.numpy(), teacher_forced_log_pi(model, b2).numpy(), rtol=1e-6)


def test_decode_in_pieces_and_reorder():
    """Decoding a few tokens at a time, reordering the rows in between (what the twisted SMC
    does after resampling), still gives each final row the density of its own tokens."""
    model = _model(floor=True)
    dec = Decoder(model, 6, tau=0.9)
    g = torch.Generator().manual_seed(4)
    dec.decode(5, g)
    before = dec.bins[:, :5].clone()
    index = torch.tensor([2, 2, 0, 5, 1, 1])
    dec.reorder(index)
    torch.testing.assert_close(dec.bins[:, :5], before[index])
    dec.decode(dec.T - 5, g)
    assert dec.n_done == dec.T
    assert torch.equal(dec.bins[0, :5], dec.bins[1, :5]) and not torch.equal(
        dec.bins[0], dec.bins[1]
    )
    tf = teacher_forced_log_pi(model, dec.bins, 0.9).numpy()
    np.testing.assert_allclose(dec.log_pi.numpy(), tf, rtol=1e-6, atol=1e-4)
    with pytest.raises(ValueError, match="cannot decode"):
        dec.decode(1, g)
    with pytest.raises(ValueError, match="row indices"):
        dec.reorder(torch.tensor([0, 1]))


def test_per_row_features():
    """[n, T] features (a different system per row) decode like [T] features row by row."""
    model = _model()
    f = model.default_features()
    rows = type(f)(**{k: v.expand(5, -1).clone() for k, v in f.tensors().items()})
    rows.atom_type[2:] = (rows.atom_type[2:] + 1) % N_ATOM_TYPES
    bins, lp, _ = sample_bins(model, 5, 1.0, torch.Generator().manual_seed(2), rows, batch_size=3)
    tf = teacher_forced_log_pi(model, bins, 1.0, rows).numpy()
    np.testing.assert_allclose(lp.numpy(), tf, rtol=1e-6, atol=1e-4)


def test_bf16_log_q_is_the_density_of_its_own_draws():
    """A bf16 run's log pi equals a teacher-forced bf16 pass over its own bins up to the bf16
    rounding of the two computation orders (the decoder attends over the masked cache like the
    causal pass)."""
    model = _model()
    g = torch.Generator().manual_seed(2)
    bins, lp, _ = sample_bins(model, 128, 1.0, g, batch_size=64, dtype="bf16")
    tf16 = teacher_forced_log_pi(model, bins, 1.0, dtype=torch.bfloat16).numpy()
    tf32 = teacher_forced_log_pi(model, bins, 1.0).numpy()
    scale = np.abs(tf32).mean()  # ~50 nats over 27 tokens
    # measured on this model: mean |diff| 0.004 nats (max 0.24)
    d = np.abs(lp.numpy() - tf16)
    assert d.mean() < 5e-4 * scale and d.max() < 1e-2 * scale, (d.mean(), d.max(), scale)
    # bf16 is a different (rounded) model from float32, but close to it
    assert np.abs(lp.numpy() - tf32).mean() < 1e-2 * scale


def test_transferable_bound_model_decodes_its_density():
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_bins=256,
        n_layer=1,
        n_embd=32,
        n_head=2,
        head_dim=16,
        max_atoms=40,
        n_atom_types=N_ATOM_TYPES,
        n_residue_types=N_RESIDUE_TYPES,
    )
    net = TransferableARBG(cfg, ConditioningConfig(n_layer=1, n_head=2, head_dim=16))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    system = _FakeSystem()
    bound = BoundModel(net.eval(), encode_system(system, 0.3, Binning(256, -4.0, 4.0)))
    bins, lp, _ = sample_bins(bound, 12, 1.0, torch.Generator().manual_seed(5), batch_size=12)
    assert (bins[:, bound.floor > 0] >= 128).all()  # gauge floors respected
    tf = teacher_forced_log_pi(bound, bins, 1.0).numpy()
    np.testing.assert_allclose(lp.numpy(), tf, rtol=1e-6, atol=1e-4)


class _FakeSystem:
    """The layout of a 2-residue peptide (what encode_system reads), without OpenMM."""

    n_atoms = 12
    n_residues = 2
    atom_type_id = np.arange(12) % 7 + 1
    residue_type_id = np.array([3] * 6 + [5] * 6)
    residue_index = np.array([0] * 6 + [1] * 6)
    residue_blocks = [(0, 6), (6, 12)]
    gauge_atoms = (6, 7, 8)


def test_draw_categorical_exact():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 16, generator=g) * 2
    logits[:, :3] = -math.inf  # excluded bins
    n = 200_000
    u = torch.rand(n, 3, generator=g, dtype=torch.float64)
    bins, lp = draw_categorical(logits.expand(n, 3, 16), 0.8, u)
    assert bins.min() >= 3 and lp.dtype == torch.float32
    ref = torch.log_softmax(logits / 0.8, dim=-1)
    torch.testing.assert_close(lp, ref.expand(n, 3, 16).gather(-1, bins[..., None])[..., 0])
    freq = torch.stack([torch.bincount(bins[:, r], minlength=16) for r in range(3)]) / n
    p = ref.exp()
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 5 * sigma + 1e-12).all()


def test_auto_batch_size_fake_budget():
    cfg = ModelConfig.preset("large", n_bins=8192)
    T = 3 * 130 - 6
    per = decode_bytes_per_row(cfg, T, torch.bfloat16)
    assert per < decode_bytes_per_row(cfg, T, torch.float32)
    # the KV cache alone: 2 * 16 layers * 8 heads * 64 * T * 2 bytes
    assert per > 2 * 16 * 8 * 64 * T * 2
    budget = 100 * per  # fake free memory: 80% of it holds 80 rows
    b = auto_batch_size(cfg, T, "cuda", torch.bfloat16, free_bytes=budget, multiple=1)
    assert b == 80
    assert auto_batch_size(cfg, T, "cuda", torch.bfloat16, free_bytes=budget) == 64  # rounded
    assert auto_batch_size(cfg, T, "cuda", torch.bfloat16, free_bytes=per // 2) == 1
    huge = 10**15
    assert auto_batch_size(cfg, T, "cpu", free_bytes=huge) == CPU_MAX_AUTO_BATCH
    assert auto_batch_size(cfg, T, "cuda", free_bytes=huge) == 65536
    with pytest.raises(ValueError, match="free_bytes"):
        auto_batch_size(cfg, T, "cuda", free_bytes=0)


def test_resolve_batch_size():
    model = _model()
    b = resolve_batch_size(model, "auto")
    assert 1 <= b <= CPU_MAX_AUTO_BATCH
    assert resolve_batch_size(model, "17") == 17 and resolve_batch_size(model, 5) == 5
    with pytest.raises(ValueError, match="batch_size"):
        resolve_batch_size(model, "many")
    with pytest.raises(ValueError, match="batch_size"):
        resolve_batch_size(model, 0)
    bins, lp, _ = sample_bins(model, 3, 1.0, torch.Generator().manual_seed(0), batch_size="auto")
    assert bins.shape == (3, len(model.default_features())) and torch.isfinite(lp).all()


def test_cli_sample_auto_batch_bf16(tmp_path, capsys):
    from pathlib import Path

    from arbg.cli import main

    asset = Path(__file__).resolve().parents[1] / "src" / "arbg" / "assets" / "aldp" / "checkpoint"
    out = tmp_path / "run"
    argv = ["sample", str(asset), "--out", str(out), "--n", "6", "--batch-size", "auto"]
    assert main([*argv, "--dtype", "bf16", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "batch size (auto, bf16 on cpu): " in text
    with np.load(out / "samples.npz") as z:
        assert z["coords"].shape[0] == 6 and np.isfinite(z["log_q"]).all()
    with pytest.raises(SystemExit):
        main(["sample", str(asset), "--out", str(out), "--batch-size", "lots"])


def test_gpu_check_layouts_match_the_systems(aldp):
    """bench/gpu_check.py runs without OpenMM from stored atom layouts: they must be current."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check_systems.json"
    d = json.loads(path.read_text())["aldp"]
    assert d["n_atoms"] == aldp.n_atoms and d["n_residues"] == aldp.n_residues
    for key in ("atom_type_id", "residue_type_id", "residue_index"):
        np.testing.assert_array_equal(d[key], getattr(aldp, key))
    assert [tuple(b) for b in d["residue_blocks"]] == [tuple(b) for b in aldp.residue_blocks]
    assert tuple(d["gauge_atoms"]) == tuple(aldp.gauge_atoms)
    assert (N_ATOM_TYPES, N_RESIDUE_TYPES) == (88, 29)  # the vocabularies gpu_check assumes


def test_progress_bar_counts_whole_samples_without_overshoot(capsys):
    """The bar counts tokens in integers shown as samples: it ends at exactly n/n, with no
    tqdm 'clamping frac' warning (float ticks used to overshoot the total)."""
    import warnings

    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample_bins(model, 37, 1.0, torch.Generator().manual_seed(0), batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "37/37" in err and "clamping" not in err
