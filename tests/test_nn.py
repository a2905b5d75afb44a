"""Contract tests for pentachora.nn (shared layers)."""

from __future__ import annotations

import pytest
import torch

from pentachora.nn import (
    BoundarySmooth,
    ResidualMLP,
    SpectralCrossAttention,
    check_image_batch,
    patchify,
    unpatchify,
)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ----------------------------------------------------------------------------- patchify
@pytest.mark.parametrize(("c", "h", "w", "p"), [(3, 32, 48, 8), (1, 16, 16, 4), (5, 12, 8, 4)])
def test_patchify_round_trip_exact(gen, c, h, w, p):
    x = torch.randn(2, c, h, w, generator=gen)
    tokens = patchify(x, p)
    assert tokens.shape == (2, (h // p) * (w // p), c * p * p)
    assert torch.equal(unpatchify(tokens, p, h, w, c), x)


def test_patchify_token_is_one_tile(gen):
    x = torch.randn(1, 3, 8, 12, generator=gen)
    tokens = patchify(x, 4)
    # patch index 4 = grid row 1, column 1 (grid is 2 × 3); channel-major (c, p1, p2) layout
    assert torch.equal(tokens[0, 4], x[0, :, 4:8, 4:8].reshape(-1))


def test_unpatchify_rejects_wrong_token_shape(gen):
    tokens = torch.randn(2, 5, 48, generator=gen)
    with pytest.raises(ValueError, match="unpatchify expects"):
        unpatchify(tokens, 4, 8, 8, 3)


def test_check_image_batch_accepts_valid(gen):
    check_image_batch(torch.randn(2, 3, 16, 24, generator=gen), channels=3, patch=8)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((3, 16, 16), r"\(B, C, H, W\).*unsqueeze"),
        ((2, 1, 3, 16, 16), r"\(B, C, H, W\)"),
        ((2, 1, 16, 16), "expected 3 channel"),
        ((2, 3, 4, 16), "smaller than one 8×8 patch"),
        ((2, 3, 20, 16), r"height 20 → nearest valid 16 or 24.*pentachora reconstruct"),
        ((2, 3, 16, 30), r"width 30 → nearest valid 24 or 32"),
        ((0, 3, 16, 16), "batch is empty"),  # an empty batch gave loss NaN in every patch model
    ],
)
def test_check_image_batch_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        check_image_batch(torch.zeros(shape), channels=3, patch=8)


def test_check_image_batch_counts_nonfinite():
    x = torch.zeros(2, 3, 8, 8)
    x[0, 0, 0, :3] = float("nan")
    x[1, 2, 5, 5] = float("inf")
    with pytest.raises(ValueError, match="3 NaN and 1 inf"):
        check_image_batch(x, channels=3, patch=8)


def test_check_image_batch_rejects_integer_pixels():
    with pytest.raises(TypeError, match="floating-point"):
        check_image_batch(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), channels=3, patch=8)


# ----------------------------------------------------------------------------- ResidualMLP
def test_residual_mlp_shapes_and_params(gen):
    mlp = ResidualMLP(12, 32, 20, depth=3)
    assert mlp(torch.randn(4, 7, 12, generator=gen)).shape == (4, 7, 20)
    per_block = 2 * 32 + 2 * (32 * 32 + 32)
    assert sum(p.numel() for p in mlp.parameters()) == (12 * 32 + 32) + 3 * per_block + (32 * 20 + 20)
    assert ResidualMLP(5, 8, 3, depth=0)(torch.randn(2, 5, generator=gen)).shape == (2, 3)


def test_residual_mlp_reference_width():
    # the reference's encoder trunk at hidden 768, depth 4 on 16×16×3 patches (before enc_out)
    mlp = ResidualMLP(768, 768, 4096, depth=4)
    trunk = sum(p.numel() for n, p in mlp.named_parameters() if not n.startswith("out_proj"))
    assert trunk == 590_592 + 4 * 1_182_720


def test_residual_mlp_rejects_bad_args():
    with pytest.raises(ValueError):
        ResidualMLP(4, 8, 4, depth=-1)
    with pytest.raises(ValueError):
        ResidualMLP(4, 8, 4, depth=1, dropout=1.0)


# ----------------------------------------------------------------------------- cross-attention
def test_cross_attention_alpha_bounds_and_identity_at_init(gen):
    torch.manual_seed(0)
    layer = SpectralCrossAttention(16, n_heads=4, max_alpha=0.2)
    alpha = layer.alpha
    assert alpha.shape == (16,)
    assert torch.all(alpha >= 0) and torch.all(alpha <= 0.2)
    assert float(alpha.detach().max()) < 0.03  # sigmoid(-2)·0.2 ≈ 0.024: near zero at init
    s = torch.rand(3, 10, 16, generator=gen) * 5
    out = layer(s)
    assert out.shape == s.shape
    # |S′ − S| ≤ α|S| < 0.03|S|: close to the identity
    assert torch.all((out - s).abs() <= 0.0241 * s.abs() + 1e-6)
    # extreme logits stay inside [0, max_alpha]
    with torch.no_grad():
        layer.alpha_logits.copy_(torch.linspace(-50, 50, 16))
    assert torch.all(layer.alpha >= 0) and torch.all(layer.alpha <= 0.2)
    # α = 0 → exact identity
    with torch.no_grad():
        layer.alpha_logits.fill_(-1e4)
    assert torch.equal(layer(s), s)


def test_cross_attention_is_bounded_multiplicative(gen):
    layer = SpectralCrossAttention(8, n_heads=2, max_alpha=0.5, alpha_init=10.0)
    s = torch.randn(2, 6, 8, generator=gen)
    ratio = layer(s) / s
    assert torch.all(ratio >= 0.5 - 1e-5) and torch.all(ratio <= 1.5 + 1e-5)


def test_cross_attention_mixes_patches_and_has_grads(gen):
    torch.manual_seed(1)
    layer = SpectralCrossAttention(4, n_heads=2, alpha_init=0.0)
    s = torch.rand(1, 5, 4, generator=gen) + 0.5
    base = layer(s)
    s2 = s.clone()
    s2[0, 4, 0] += 1.0  # change one mode of another patch: patch 0's output must change
    assert not torch.allclose(layer(s2)[0, 0], base[0, 0])
    base.sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_cross_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        SpectralCrossAttention(6, n_heads=4)


# ----------------------------------------------------------------------------- boundary smooth
def test_boundary_smooth_identity_at_init(gen):
    smooth = BoundarySmooth(3, kernel=3, mid=8)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    assert torch.equal(smooth(x), x)
    smooth(x).square().sum().backward()
    assert smooth.conv2.weight.grad.abs().sum() > 0  # the zero-initialised conv learns first


def test_boundary_smooth_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        BoundarySmooth(3, kernel=4)
