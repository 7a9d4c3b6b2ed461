"""Tests of arbg.nn.heads: bins / MoL / GMM / GIVT heads, exact sampling, log q, training,
loading."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from arbg.chem.systems import N_ATOM_TYPES, N_RESIDUE_TYPES, build_system
from arbg.data.datasets import Dataset
from arbg.nn.coordinates import Binning, fit_binning, fit_standardization
from arbg.nn.heads import HEADS, GIVTHead, GMMHead, MoLHead, log1mexp, values_to_z, z_to_values
from arbg.nn.model import ARBG, ModelConfig, token_features_for_system
from arbg.sampling.sampler import (
    TransformerProposal,
    generate,
    log_q,
    make_generators,
    sample_bins,
)
from arbg.train.checkpoints import load_checkpoint, save_checkpoint, write_checksums
from arbg.train.config import TrainConfig
from arbg.train.trainer import Trainer

torch.set_num_threads(1)

ALL_HEADS = ["bins", "mol", "gmm", "givt"]
MIXTURES = {"mol": MoLHead, "gmm": GMMHead, "givt": GIVTHead}
K = 3
N_ATOMS = 4
T = 3 * (N_ATOMS - 1)


def _feats():
    return token_features_for_system(
        atom_type_id=np.array([1, 2, 3, 4]),
        residue_type_id=np.array([0, 0, 1, 1]),
        residue_index=np.array([0, 0, 1, 1]),
    )


def _model(
    head: str,
    n_bins: int = 32,
    seed: int = 0,
    perturb: float = 0.05,
    dtype: torch.dtype = torch.float64,
) -> ARBG:
    """A tiny model with random (perturbed) weights."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_bins=n_bins,
        n_layer=2,
        n_embd=32,
        n_head=2,
        head_dim=16,
        max_atoms=8,
        n_atom_types=8,
        n_residue_types=4,
        max_residues=4,
        value_fourier=4,
        head=head,
        head_kwargs={} if head == "bins" else {"n_mixtures": K},
    )
    model = ARBG(cfg, default_feats=_feats())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn_like(p))
    return model.to(dtype).eval()


def _random_params(head, shape, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = scale * torch.randn(*shape, head.n_outputs, generator=g, dtype=torch.float64)
    if hasattr(head, "no_floor"):  # mixture heads: the non-learned floor channel
        p[..., -1] = head.no_floor
    return p


def _all_bins_log_prob(head, params, tau):
    """log P(b) for every bin b: params [..., P] -> [..., L]."""
    L = head.n_bins
    x = torch.arange(L).expand(*params.shape[:-1], L)
    return head.log_prob(params.unsqueeze(-2).expand(*params.shape[:-1], L, -1), x, tau)


# --------------------------------------------------------------------------------------------------
# normalisation and exact sampling


@pytest.mark.parametrize("name", ["mol", "gmm"])
@pytest.mark.parametrize("tau", [1.0, 0.8])
def test_discretized_mass_sums_to_one(name, tau):
    head = MIXTURES[name](16, 64, n_mixtures=4)
    params = _random_params(head, (3, 5))
    lp = _all_bins_log_prob(head, params, tau)  # [3, 5, L]
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(
        torch.logsumexp(lp, -1), torch.zeros(3, 5, dtype=torch.float64), atol=1e-12, rtol=0
    )
    # a floor: bins below it have zero mass, the floor bin takes the lower tail
    floored = head.apply_floor(params, torch.tensor([0, 5, 17, 40, 63]))
    lpf = _all_bins_log_prob(head, floored, tau)
    torch.testing.assert_close(
        torch.logsumexp(lpf, -1), torch.zeros(3, 5, dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert torch.isneginf(lpf[:, 2, :17]).all() and torch.isfinite(lpf[:, 2, 17:]).all()


@pytest.mark.parametrize("tau", [1.0, 0.8])
def test_givt_density_integrates_to_one(tau):
    head = GIVTHead(16, 64, n_mixtures=4)
    params = _random_params(head, (1, 3))
    u = torch.linspace(-400.0, 500.0, 150_001, dtype=torch.float64)
    n = u.numel()

    def integral(p):
        lp = head.log_prob(p[0, :, None].expand(3, n, -1), u.expand(3, n), tau)  # [3, n]
        assert not torch.isnan(lp).any()
        return torch.trapezoid(lp.exp(), u, dim=-1)

    torch.testing.assert_close(
        integral(params), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0
    )
    # floor 0 restricts nothing (bin 0 reaches -inf); floors > 0 truncate and renormalise
    floored = head.apply_floor(params, torch.tensor([0, 30, 45]))
    assert torch.isneginf(floored[0, 0, -1])
    torch.testing.assert_close(
        integral(floored), torch.ones(3, dtype=torch.float64), atol=2e-3, rtol=0
    )


@pytest.mark.parametrize("name", ["bins", "mol", "gmm"])
def test_discrete_sampler_matches_tempered_pmf(name):
    L, tau, n = 16, 0.8, 200_000
    head = HEADS[name](8, L, **({} if name == "bins" else {"n_mixtures": 3}))
    params = _random_params(head, (1, 1), scale=1.0, seed=3)
    if name != "bins":  # a floor too, to check the floor bin's tail
        params = head.apply_floor(params, torch.tensor([4]))
    g = torch.Generator().manual_seed(0)
    draws = head.sample(params.expand(n, 1, -1), tau, g)[:, 0]
    p = _all_bins_log_prob(head, params[0, 0], tau).exp().double()  # [L]
    counts = torch.bincount(draws, minlength=L).double()
    expected = n * p
    ok = expected > 5
    chi2 = float((((counts - expected) ** 2) / expected)[ok].sum())
    assert counts[~ok].sum() < 50
    assert chi2 < int(ok.sum()) + 6 * math.sqrt(2 * int(ok.sum())), chi2  # ~6 sigma


def test_givt_sampler_matches_density():
    head = GIVTHead(8, 64, n_mixtures=3)
    params = _random_params(head, (1, 1), scale=1.0, seed=4)
    for floor in (0, 36):
        p = head.apply_floor(params, torch.tensor([floor]))
        g = torch.Generator().manual_seed(1)
        x = head.sample(p.expand(50_000, 1, -1), 0.8, g)[:, 0].sort().values
        if floor:
            assert x.min() >= floor
        grid = torch.linspace(-200, 300, 200_001, dtype=torch.float64)
        dens = head.log_prob(p[0].expand(grid.numel(), -1)[None], grid[None], 0.8)[0].exp()
        cdf = torch.cumulative_trapezoid(dens, grid)
        cdf = torch.cat([cdf.new_zeros(1), cdf])
        model_cdf = np.interp(x.numpy(), grid.numpy(), cdf.numpy())
        emp = np.arange(1, x.numel() + 1) / x.numel()
        ks = np.abs(model_cdf - emp).max()
        assert ks < 1.63 / math.sqrt(x.numel()) + 2e-3, ks  # KS 1% level (+ quadrature)


# --------------------------------------------------------------------------------------------------
# through the model: sample, score, extreme parameters


@pytest.mark.parametrize("tau", [1.0, 0.8])
@pytest.mark.parametrize("head", ALL_HEADS)
def test_sample_then_score_same_log_likelihood(head, tau):
    model = _model(head)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    bins, lp, values = sample_bins(model, 12, tau, g1, batch_size=5)
    b2, lp2, v2 = sample_bins(model, 12, tau, g2, batch_size=12)  # other chunks, same stream
    assert bins.shape == (12, T) and lp.dtype == torch.float64
    if head == "bins":  # one [T, rows] uniform block per chunk: other chunks, other draws
        assert not torch.equal(bins, b2)
    tf2 = model.log_prob(v2 if head == "givt" else b2, tau=tau).detach()
    np.testing.assert_allclose(tf2.numpy(), lp2.numpy(), rtol=1e-6)
    if head == "givt":
        assert values is not None and values.dtype == torch.float64
        assert torch.equal(model.head.tokens(values), bins)
        target = values
    else:
        assert values is None
        target = bins
    with torch.no_grad():
        tf = model.log_prob(target, tau=tau)
    assert torch.isfinite(tf).all()
    np.testing.assert_allclose(tf.numpy(), lp.numpy(), rtol=1e-6)
    if head == "givt":
        with pytest.raises(TypeError):
            model.log_prob(bins)


@pytest.mark.parametrize("head", ["mol", "gmm", "givt"])
def test_extreme_parameters_are_finite(head):
    L = 64
    h = MIXTURES[head](8, L, n_mixtures=K)
    rows = []
    for mean in (-1e4, -3.0, 0.0, 0.7, 50.0, 1e6):
        for log_scale in (-1e4, -30.0, 0.0, 8.0, 1e4):
            for logit in (-1e4, 0.0, 1e4):
                r = torch.zeros(h.n_outputs, dtype=torch.float64)
                r[:K] = torch.tensor([mean, -mean, 0.1])
                r[K : 2 * K] = torch.tensor([log_scale, 0.0, -log_scale])
                r[2 * K : 3 * K] = torch.tensor([logit, -logit, 0.0])
                r[-1] = h.no_floor
                rows.append(r)
    params = torch.stack(rows)[None].requires_grad_(True)  # [1, R, P]
    R = params.shape[1]
    if head == "givt":
        x = torch.tensor([-1e5, -3.0, 0.0, 0.5, 31.3, 63.99, 64.0, 1e5], dtype=torch.float64)
    else:
        x = torch.tensor([0, 1, 17, 31, 62, 63])
    for tau in (1.0, 0.5):
        lp = h.log_prob(params[:, :, None].expand(1, R, x.numel(), -1), x.expand(1, R, -1), tau)
        assert torch.isfinite(lp).all(), head
        # every row's probability/density is a proper value (<= 1 for the discrete heads)
        if head != "givt":
            assert (lp <= 1e-12).all()
        targets = x[torch.arange(R) % x.numel()][None]  # [1, R]
        loss = h.loss(params, targets)
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, params)
        assert torch.isfinite(grad).all()
        s = h.sample(params.detach(), tau, torch.Generator().manual_seed(0))
        assert torch.isfinite(s.double()).all()
        if head != "givt":
            assert s.min() >= 0 and s.max() < L


def test_log1mexp_accuracy():
    x = -torch.logspace(-20, 3, 200, dtype=torch.float64)
    ref = torch.tensor(
        [
            math.log(-math.expm1(v)) if v > -math.log(2) else math.log1p(-math.exp(v))
            for v in x.tolist()
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(log1mexp(x), ref, rtol=1e-13, atol=0)
    assert torch.isfinite(log1mexp(torch.zeros(1, dtype=torch.float64))).all()


# --------------------------------------------------------------------------------------------------
# training, loading


def _toy_sequences(n: int, L: int, seed: int) -> torch.Tensor:
    """Correlated Gaussian random walks in bin units, [n, T] float64."""
    g = torch.Generator().manual_seed(seed)
    steps = 1.5 * torch.randn(n, T, generator=g, dtype=torch.float64)
    return L / 2 + torch.cumsum(steps, dim=1) + torch.linspace(-3, 3, T, dtype=torch.float64)


@pytest.mark.parametrize("head", ALL_HEADS)
def test_tiny_model_trains(head):
    L = 32
    model = _model(head, n_bins=L, perturb=0.0, dtype=torch.float32).train()
    data = _toy_sequences(256, L, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        u = data[torch.randint(len(data), (32,), generator=g)]
        targets = u if model.head.continuous else u.floor().long().clamp(0, L - 1)
        tokens = model.shift_right(model.head.tokens(targets))
        _, loss = model(tokens, targets=targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses


@pytest.mark.parametrize(
    "head,frame", [("gmm", "centroid"), ("givt", "centroid"), ("mol", "gauge"), ("givt", "gauge")]
)
def test_trainer_and_checkpoint_with_mixture_head(tmp_path, head, frame):
    system = build_system("aldp", minimize=False)
    rng = np.random.default_rng(0)
    pos = system.positions[None] + 0.01 * rng.standard_normal((60, system.n_atoms, 3))
    ds = Dataset(
        pos.astype(np.float32), system, {"train": [0, 48], "val": [48, 54], "test": [54, 60]}
    )
    cfg = TrainConfig(
        preset="tiny",
        model_overrides=dict(
            n_layer=1, n_embd=32, n_head=2, head_dim=16, head=head, head_kwargs={"n_mixtures": 4}
        ),
        n_bins=128,
        steps=8,
        batch_size=8,
        eval_every=4,
        eval_frames=6,
        checkpoint_every=0,
        log_every=4,
        seed=1,
        device="cpu",
        frame=frame,
    )
    tr = Trainer(ds, tmp_path, cfg, progress=False)
    last = tr.run()
    assert math.isfinite(tr.last_eval["val_nll"]) and math.isfinite(tr.last_eval["val_logq"])
    stored = json.loads((last / "config.json").read_text())["model"]
    assert stored["head"] == head and stored["head_kwargs"] == {"n_mixtures": 4}
    ck = load_checkpoint(last, system=system)
    assert ck.model.config.head == head and type(ck.model.head) is HEADS[head]
    batch = generate(ck.model, ck.binning, ck.standardization, 6, tau=0.9, seed=0, chirality="none")
    assert np.isfinite(batch.log_q).all() and batch.coords.shape == (6, system.n_atoms, 3)
    if frame == "gauge":  # the floored gauge tokens (a, c > 0) hold with every head
        floor = ck.binning.token_floor(ck.standardization)
        assert floor is not None and floor.max() > 0 and ck.model.bin_floor.numel()
        z = ck.standardization.forward(batch.coords)
        assert (z[:, list(ck.standardization.gauge_token_index)] > 0).all()
        assert (batch.bins >= floor).all()


def test_checkpoint_without_head_or_frame_is_refused(tmp_path):
    d = ModelConfig(n_bins=16, n_layer=1, n_embd=16, n_head=1, head_dim=16).to_dict()
    del d["head"], d["head_kwargs"]
    assert ModelConfig.from_dict(d).head == "bins"
    # a checkpoint directory without the entry is refused (no default fills it in)
    system = build_system("aldp", minimize=False)
    rng = np.random.default_rng(0)
    frames = system.positions[None] + 0.01 * rng.standard_normal((16, system.n_atoms, 3))
    std = fit_standardization(frames)
    binning = fit_binning(std.forward(frames), n_bins=16, n_atoms=system.n_atoms)
    feats = token_features_for_system(
        system.atom_type_id, system.residue_type_id, system.residue_index
    )
    cfg = ModelConfig(
        n_bins=16,
        n_layer=1,
        n_embd=16,
        n_head=1,
        head_dim=16,
        max_atoms=32,
        n_atom_types=N_ATOM_TYPES,
        n_residue_types=N_RESIDUE_TYPES,
    )
    path = save_checkpoint(tmp_path / "ck", ARBG(cfg, default_feats=feats), binning, std, system)
    original = json.loads((path / "config.json").read_text())
    for section, key in (("model", "head"), ("standardization", "frame")):
        config = json.loads(json.dumps(original))
        del config[section][key]
        (path / "config.json").write_text(json.dumps(config))
        write_checksums(path)
        with pytest.raises(ValueError, match=f"config.json: no '{section}.{key}' entry"):
            load_checkpoint(path, system=system)
    (path / "config.json").write_text(json.dumps(original))
    (path / "checksums.json").unlink()
    with pytest.raises(ValueError, match="has no checksums.json"):
        load_checkpoint(path, system=system)
    write_checksums(path)
    assert load_checkpoint(path, system=system).model.config.head == "bins"


# --------------------------------------------------------------------------------------------------
# exact log q through generate and the SMC adapter (continuous head)


@pytest.fixture(scope="module")
def givt_parts():
    system = build_system("aldp", minimize=False)
    rng = np.random.default_rng(0)
    frames = system.positions[None] + 0.02 * rng.standard_normal((32, system.n_atoms, 3))
    std = fit_standardization(frames)
    binning = fit_binning(std.forward(frames), n_bins=64, n_atoms=system.n_atoms)
    feats = token_features_for_system(
        system.atom_type_id, system.residue_type_id, system.residue_index
    )
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_bins=64,
        n_layer=1,
        n_embd=32,
        n_head=2,
        head_dim=16,
        max_atoms=32,
        n_atom_types=N_ATOM_TYPES,
        n_residue_types=N_RESIDUE_TYPES,
        head="givt",
        head_kwargs={"n_mixtures": 3},
    )
    model = ARBG(cfg, default_feats=feats)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.double().eval(), binning, std, system


def _givt_log_q(model, binning: Binning, std, coords: np.ndarray, tau: float) -> np.ndarray:
    z = std.forward(coords)
    with torch.no_grad():
        lp = model.log_prob(z_to_values(torch.as_tensor(z), binning), tau=tau).numpy()
    return log_q(lp, binning, std, z)


def test_generate_givt_exact_log_q(givt_parts):
    model, binning, std, system = givt_parts
    batch = generate(
        model,
        binning,
        std,
        8,
        tau=0.8,
        seed=2,
        chirality="zero",
        chirality_atoms=system.chirality_atoms,
    )
    np.testing.assert_allclose(
        batch.log_q, _givt_log_q(model, binning, std, batch.coords, 0.8), rtol=1e-6
    )
    bins, _ = binning.encode(std.forward(batch.coords))
    assert np.array_equal(bins, batch.bins)
    with pytest.raises(ValueError, match="mirror"):
        generate(model, binning, std, 2, chirality="mirror", chirality_atoms=system.chirality_atoms)
    u = torch.tensor([[0.0, 10.5, 63.9]], dtype=torch.float64)
    torch.testing.assert_close(z_to_values(values_to_z(u, binning), binning), u)


def test_transformer_proposal_givt_exact_log_q(givt_parts):
    model, binning, std, _ = givt_parts
    g_bins, g_off = make_generators(7)
    prop = TransformerProposal(
        model, binning, std, tau=0.9, generator=g_bins, offset_generator=g_off
    )
    state = prop.start(5)
    total = np.zeros(5)
    for _ in range(prop.n_units // 3):
        total += prop.extend(state, 3)
    prop.reorder(state, np.array([4, 4, 0, 2, 1]))
    total = total[[4, 4, 0, 2, 1]]
    x = prop.finish(state)
    np.testing.assert_allclose(total, state.log_q, rtol=1e-12)
    np.testing.assert_allclose(state.log_q, _givt_log_q(model, binning, std, x, 0.9), rtol=1e-6)


def test_cli_train_head_flags():
    from arbg.cli import build_parser

    args = build_parser().parse_args(
        ["train", "data", "--out", "o", "--head", "givt", "--n-mixtures", "5"]
    )
    assert args.head == "givt" and args.n_mixtures == 5
    args = build_parser().parse_args(["train", "data", "--out", "o"])
    assert args.head == "bins" and args.n_mixtures == 10
