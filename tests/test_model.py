"""Tests of arbg.nn.model: KV cache, causality, reorder, overfitting, parameter counts."""

import numpy as np
import pytest
import torch

from arbg.nn.model import (
    ARBG,
    PRESETS,
    BinHead,
    ModelConfig,
    TokenFeatures,
    count_params,
    token_features_for_system,
)

torch.set_num_threads(1)

N_ATOMS = 6
T = 3 * (N_ATOMS - 1)


def _feats() -> TokenFeatures:
    return token_features_for_system(
        atom_type_id=np.array([1, 2, 3, 4, 5, 6]),
        residue_type_id=np.array([0, 0, 1, 1, 1, 2]),
        residue_index=np.array([0, 0, 1, 1, 1, 2]),
    )


def _model(n_bins: int = 64, **kw) -> ARBG:
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_bins=n_bins,
        n_layer=2,
        n_embd=48,
        n_head=2,
        head_dim=16,
        max_atoms=16,
        n_atom_types=8,
        n_residue_types=4,
        max_residues=4,
        **kw,
    )  # attention width 32 != n_embd 48 on purpose
    model = ARBG(cfg, default_feats=_feats())
    # perturb the zero-initialised projections so the test is not trivial
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_token_features_layout() -> None:
    f = _feats()
    assert len(f) == T
    assert f.axis.tolist()[:6] == [0, 1, 2, 0, 1, 2]
    assert f.atom_index.tolist()[:6] == [0, 0, 0, 1, 1, 1]
    assert f.atom_type.tolist()[-1] == 5  # last modelled atom is atom 4 (atom 5 is constrained)
    assert f.slice(3, 6).atom_index.tolist() == [1, 1, 1]


def test_causality() -> None:
    model = _model()
    bins = torch.randint(0, 64, (2, T))
    tokens = model.shift_right(bins)
    tokens2 = tokens.clone()
    tokens2[:, 9] = (tokens2[:, 9] + 7) % 64
    with torch.no_grad():
        a, _ = model(tokens)
        b, _ = model(tokens2)
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=0, rtol=0)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_batched_features_and_log_prob() -> None:
    model = _model()
    bins = torch.randint(0, 64, (2, T))
    f = _feats()
    fb = TokenFeatures(**{k: v.expand(2, T) for k, v in f.tensors().items()})
    with torch.no_grad():
        a, loss = model(model.shift_right(bins), fb, targets=bins)
        b, _ = model(model.shift_right(bins))
        lp = model.log_prob(bins)
        lp_hot = model.log_prob(bins, tau=2.0)
    torch.testing.assert_close(a, b)
    assert lp.dtype == torch.float64 and lp.shape == (2,)
    # mean cross-entropy == -mean per-token log-prob
    assert float(loss) == pytest.approx(float(-lp.sum() / (2 * T)), rel=1e-5)
    assert not torch.allclose(lp, lp_hot)


def test_head_sample_and_log_prob() -> None:
    head = BinHead(8, 5)
    logits = torch.tensor([[[0.0, 0.0, 10.0, 0.0, -10.0]]]).expand(2, 3, 5)
    g = torch.Generator().manual_seed(0)
    s = head.sample(logits, tau=1.0, generator=g)
    assert s.shape == (2, 3) and s.dtype == torch.int64
    assert (s == 2).float().mean() > 0.5
    lp = head.log_prob(logits, torch.full((2, 3), 2))
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1)[..., 2])
    targets = torch.full((2, 3), 2)
    targets[0, 0] = -1
    assert float(head.loss(logits, targets)) == pytest.approx(float(-lp.mean()), rel=1e-5)


def test_overfit_few_frames() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig.preset(
        "tiny",
        n_bins=256,
        n_layer=2,
        max_atoms=16,
        n_atom_types=8,
        n_residue_types=4,
        max_residues=4,
    )
    model = ARBG(cfg, default_feats=_feats())
    bins = torch.randint(0, 256, (3, T))  # three frames, no augmentation
    tokens = model.shift_right(bins)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(tokens, targets=bins)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # floor: the first coordinate cannot be predicted (same start token for all frames), so the
    # best mean loss is log(3) / T; everything after it is determined by the frame
    floor = float(np.log(3) / T)
    assert loss.item() < floor + 0.05, (loss.item(), floor)


def test_param_counts() -> None:
    n_small = count_params(ModelConfig.preset("small", n_bins=4096))
    assert abs(n_small - 7.4e6) / 7.4e6 < 0.10, n_small
    n_medium = count_params(ModelConfig.preset("medium", n_bins=8192))
    assert abs(n_medium - 39.9e6) / 39.9e6 < 0.10, n_medium  # paper's Chignolin model
    assert set(PRESETS) == {"tiny", "small", "medium", "large"}
    cfg = ModelConfig.preset("small", n_bins=4096)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        ModelConfig.preset("huge", n_bins=10)
