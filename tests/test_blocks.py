"""Tests of arbg.nn.model: the CPU autograd functions (rotary of q and k, RMSNorm) give the
values and gradients of the composite forms that run elsewhere (and ran before)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arbg.nn.model import RMSNorm, apply_rotary, rotary_tables, rotate_qk

torch.set_num_threads(1)


def _grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g)


def test_rotate_qk_equals_composite_rotation():
    B, T, H, Dh = 3, 7, 2, 8
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3, H, Dh, generator=gen, requires_grad=True)
    cos, sin = rotary_tables(T + 4, Dh, 100.0)
    cos, sin = cos[2 : 2 + T], sin[2 : 2 + T]  # a window of positions, as with a KV cache
    g = torch.randn(B, T, 2, H, Dh, generator=gen)
    qk = qkv.split([2, 1], dim=2)[0]  # the strided view the attention rotates
    fast = rotate_qk(qk, cos, sin)
    ref = apply_rotary(qk, cos[:, None, None], sin[:, None, None])
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-6)
    (gx,) = _grads(fast, qkv, g)
    torch.testing.assert_close(gx, _grads(ref, qkv, g)[0], rtol=1e-6, atol=1e-6)
    assert fast.permute(2, 0, 3, 1, 4)[0].is_contiguous()  # q (and k) contiguous for attention
    # a rotation keeps norms; the backward is the inverse rotation (not, e.g., the forward again)
    torch.testing.assert_close(fast.norm(dim=-1), qk.norm(dim=-1))
    back = apply_rotary(gx[:, :, :2], cos[:, None, None], sin[:, None, None])
    torch.testing.assert_close(back, g, rtol=1e-5, atol=1e-5)
    assert gx[:, :, 2].abs().max() == 0  # v untouched


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rmsnorm_equals_torch(eps):
    gen = torch.Generator().manual_seed(1)
    norm = RMSNorm(16, eps=eps)
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn(16, generator=gen))
    x = (3.0 * torch.randn(4, 5, 16, generator=gen)).requires_grad_()
    g = torch.randn(4, 5, 16, generator=gen)
    out = norm(x)
    ref = F.rms_norm(x, (16,), norm.weight, eps)  # torch's (composite on the CPU)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    got, want = _grads(out, (x, norm.weight), g), _grads(ref, (x, norm.weight), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert set(norm.state_dict()) == {"weight"}  # checkpoints load as before
    with torch.no_grad():  # other dtypes take torch's path
        xb = x.detach().bfloat16()
        torch.testing.assert_close(norm.bfloat16()(xb), F.rms_norm(xb, (16,), norm.weight, eps))
