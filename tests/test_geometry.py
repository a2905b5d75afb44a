"""Contract tests for the geometric core: closed forms, cross-checks, gradients, the measured facts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pentachora.geometry import (
    ProcrustesMap,
    cayley_menger_vol2,
    cv_loss,
    cv_metric,
    cv_proximity,
    effective_rank,
    gram_eigh_svd,
    gram_vol2,
    inv_sqrt_psd,
    newton_schulz_inv_sqrt,
    orthogonal_procrustes,
    pentachoron_volumes,
    random_subsets,
    rankme,
    soft_hand_weights,
    target_cv,
    target_cv_stats,
)
from pentachora.io import CheckpointError

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def regular_simplex(k: int) -> torch.Tensor:
    """Vertices of a regular k-simplex with unit edges: the k+1 basis vectors of R^(k+1), scaled."""
    return torch.eye(k + 1, dtype=F64) / math.sqrt(2.0)


def regular_simplex_volume(k: int) -> float:
    return math.sqrt(k + 1) / (math.factorial(k) * 2 ** (k / 2))


# ---------------------------------------------------------------- Cayley–Menger volumes


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7])
def test_regular_simplex_volume_closed_form(k):
    vol2 = cayley_menger_vol2(regular_simplex(k))
    assert vol2.dtype == F64
    assert math.isclose(math.sqrt(vol2.item()), regular_simplex_volume(k), rel_tol=1e-10)


def test_unit_cube_corner_simplex():
    # origin + the k unit vectors: volume 1/k!
    for k in (2, 3, 4, 6):
        pts = torch.cat([torch.zeros(1, k, dtype=F64), torch.eye(k, dtype=F64)])
        assert math.isclose(cayley_menger_vol2(pts).item(), 1 / math.factorial(k) ** 2, rel_tol=1e-10)


def test_segment_and_triangle():
    seg = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=F64)
    assert math.isclose(cayley_menger_vol2(seg).item(), 25.0, rel_tol=1e-12)
    tri = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]], dtype=F64)
    assert math.isclose(cayley_menger_vol2(tri).item(), 36.0, rel_tol=1e-12)


def test_degenerate_simplices_have_zero_volume():
    # 5 points in a 3-dimensional subspace of R^8, and 5 collinear points
    flat = torch.zeros(5, 8, dtype=F64)
    flat[:, :3] = torch.randn(5, 3, generator=gen(1), dtype=F64)
    line = torch.linspace(0, 1, 5, dtype=F64)[:, None] * torch.ones(1, 6, dtype=F64)
    for pts in (flat, line):
        assert abs(cayley_menger_vol2(pts).item()) < 1e-10
    assert pentachoron_volumes(flat.expand(3, 5, 8), n_samples=4).abs().max() < 1e-6


def test_cayley_menger_equals_gram_determinant_batched_any_dtype():
    pts = torch.randn(7, 4, 5, 9, generator=gen(2))  # float32 input, (7, 4) batch of 4-simplices in R^9
    cm = cayley_menger_vol2(pts)
    gr = gram_vol2(pts)
    assert cm.shape == (7, 4) and cm.dtype == F64
    torch.testing.assert_close(cm, gr, rtol=1e-9, atol=1e-12)


def test_cayley_menger_matches_numpy_direct_formula():
    pts = np.random.default_rng(3).normal(size=(5, 6))
    d2 = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    cm = np.ones((6, 6))
    cm[0, 0] = 0
    cm[1:, 1:] = d2
    expected = (-1) ** 5 / (2**4 * math.factorial(4) ** 2) * np.linalg.det(cm)
    assert math.isclose(cayley_menger_vol2(torch.from_numpy(pts)).item(), expected, rel_tol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(min_value=1, max_value=5),
    extra=st.integers(min_value=0, max_value=4),
    scale=st.floats(min_value=0.1, max_value=10.0),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_volume_is_rotation_invariant_and_scales_as_power_k(k, extra, scale, seed):
    d = k + extra
    pts = torch.randn(k + 1, d, generator=gen(seed), dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(seed + 1), dtype=F64))
    v2 = cayley_menger_vol2(pts)
    torch.testing.assert_close(cayley_menger_vol2(pts @ q + 3.0), v2, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(cayley_menger_vol2(pts * scale), v2 * scale ** (2 * k), rtol=1e-6, atol=1e-9)
    assert v2.item() > -1e-9


def test_cayley_menger_gradcheck():
    pts = torch.randn(3, 5, 6, generator=gen(4), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(cayley_menger_vol2, (pts,))


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        cayley_menger_vol2(torch.randn(5))
    with pytest.raises(ValueError):
        pentachoron_volumes(torch.randn(4, 8))
    with pytest.raises(TypeError):
        cayley_menger_vol2(torch.ones(3, 3, dtype=torch.int64))


# ---------------------------------------------------------------- random subsets and CV


def test_random_subsets_distinct_cover_all_rows_and_seeded():
    idx = random_subsets(12, 5, 400, generator=gen(5))
    assert idx.shape == (400, 5)
    assert all(len(set(row.tolist())) == 5 for row in idx)
    assert set(idx.flatten().tolist()) == set(range(12))  # drawn from all rows
    torch.testing.assert_close(idx, random_subsets(12, 5, 400, generator=gen(5)))
    assert not torch.equal(idx, random_subsets(12, 5, 400, generator=gen(6)))


def test_cv_metric_seeded_and_scale_invariant():
    pts = torch.randn(64, 16, generator=gen(7))
    a = cv_metric(pts, generator=gen(1))
    assert a == cv_metric(pts, generator=gen(1))
    assert math.isclose(a, cv_metric(pts * 37.0, generator=gen(1)), rel_tol=1e-6)  # fp32 input rounding
    assert isinstance(a, float) and 0 < a < 2


def test_cv_metric_batched_is_mean_of_sets():
    pts = torch.randn(3, 40, 8, generator=gen(8), dtype=F64)
    batched = cv_metric(pts, n_samples=50, generator=gen(2))
    g = gen(2)
    # Same subsets are used across the batch: reproduce them set by set.
    idx = random_subsets(40, 5, 50, generator=g)
    vols = [torch.sqrt(cayley_menger_vol2(p[idx]).clamp_min(0)) for p in pts]
    expected = float(np.mean([(v.std() / v.mean()).item() for v in vols]))
    assert math.isclose(batched, expected, rel_tol=1e-9)


def test_cv_loss_is_differentiable_and_gradchecks():
    pts = torch.randn(10, 6, generator=gen(9), dtype=F64, requires_grad=True)
    loss = cv_loss(pts, target=0.3, n_samples=32, generator=gen(3))
    assert loss.requires_grad and loss.dim() == 0
    loss.backward()
    assert torch.isfinite(pts.grad).all() and pts.grad.abs().sum() > 0

    def f(p):
        return cv_loss(p, target=0.3, n_samples=32, generator=gen(3))

    assert torch.autograd.gradcheck(
        f, (torch.randn(10, 6, generator=gen(10), dtype=F64, requires_grad=True),)
    )


def test_cv_loss_gradient_moves_cv_towards_target():
    pts = torch.randn(48, 16, generator=gen(11), requires_grad=True)
    target = 0.05  # far below the random-sphere value at D=16
    before = cv_metric(pts.detach(), n_samples=400, generator=gen(0))
    opt = torch.optim.SGD([pts], lr=5.0)
    for step in range(60):
        opt.zero_grad()
        cv_loss(pts, target, n_samples=64, generator=gen(step)).backward()
        opt.step()
    after = cv_metric(pts.detach(), n_samples=400, generator=gen(0))
    assert abs(after - target) < abs(before - target) - 0.02


def test_cv_degenerate_input_documented_zero_and_errors():
    collapsed = torch.zeros(20, 8, requires_grad=True)
    loss = cv_loss(collapsed, target=0.2)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(collapsed.grad, torch.zeros_like(collapsed))
    assert math.isnan(cv_metric(torch.zeros(20, 8)))
    low_dim = torch.zeros(20, 8)
    low_dim[:, :3] = torch.randn(20, 3, generator=gen(12))  # 5 points in 3 dims: all volumes 0
    assert cv_loss(low_dim, 0.2).item() == 0.0
    with pytest.raises(ValueError, match="at least 5"):
        cv_loss(torch.randn(4, 8), 0.2)
    bad = torch.randn(20, 8)
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cv_loss(bad, 0.2)
    bad[3, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        cv_metric(bad)


# ---------------------------------------------------------------- the CV-vs-dimension facts

# docs/findings.md: CV of uniformly random unit vectors on S^(D-1).
DESIGN_CV = {16: 0.202, 24: 0.151, 32: 0.126, 64: 0.086, 256: 0.040, 512: 0.028, 768: 0.0225, 1024: 0.020}


@pytest.mark.parametrize("dim,expected", sorted(DESIGN_CV.items()))
def test_target_cv_reproduces_design_facts(dim, expected):
    value, spread = target_cv_stats(dim)
    assert abs(value - expected) < max(0.08 * expected, 3 * spread / math.sqrt(8)), (dim, value, expected)


def test_target_cv_independent_of_point_count_and_cached():
    a = target_cv(32, n_points=16)
    b = target_cv(32, n_points=256)
    assert abs(a - b) < 0.01
    assert target_cv(32, n_points=16) == a  # seeded + cached
    with pytest.raises(ValueError):
        target_cv(3)


def test_target_cv_decreases_with_dimension():
    values = [target_cv(d) for d in (4, 8, 16, 32, 64, 128)]
    assert all(x > y for x, y in itertools.pairwise(values))


def test_soft_hand_schedule():
    assert cv_proximity(0.2, 0.2) == 1.0
    assert math.isclose(cv_proximity(0.35, 0.2, sigma=0.15), math.exp(-0.5))
    recon_w, cv_w = soft_hand_weights(0.2, 0.2)
    assert (recon_w, cv_w) == (1.5, 0.0)
    recon_w, cv_w = soft_hand_weights(5.0, 0.2)
    assert math.isclose(recon_w, 1.0, abs_tol=1e-9) and math.isclose(cv_w, 0.3, abs_tol=1e-9)
    recon_w, cv_w = soft_hand_weights(float("nan"), 0.2)
    assert (recon_w, cv_w) == (1.0, 0.3)
    p = math.exp(-0.5)
    recon_w, cv_w = soft_hand_weights(0.35, 0.2, boost=0.7, penalty=0.4)
    assert math.isclose(recon_w, 1 + 0.7 * p) and math.isclose(cv_w, 0.4 * (1 - p))


# ---------------------------------------------------------------- spectra


def test_effective_rank_closed_forms():
    assert math.isclose(effective_rank(torch.ones(16)).item(), 16.0, rel_tol=1e-6)
    assert math.isclose(effective_rank(torch.tensor([3.0, 0.0, 0.0])).item(), 1.0, rel_tol=1e-6)
    two = effective_rank(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert math.isclose(two[0].item(), 2.0, rel_tol=1e-6) and two[1].item() == 0.0


def test_rankme_of_low_rank_embeddings():
    z = torch.randn(200, 4, generator=gen(13)) @ torch.randn(4, 64, generator=gen(14))
    assert 2.5 < rankme(z).item() < 4.2
    assert rankme(torch.randn(500, 32, generator=gen(15))).item() > 25


def test_gram_eigh_svd_matches_torch_svd():
    a = torch.randn(6, 64, 16, generator=gen(16))
    u, s, vh = gram_eigh_svd(a)
    assert u.shape == (6, 64, 16) and s.shape == (6, 16) and vh.shape == (6, 16, 16)
    assert u.dtype == a.dtype
    ref = torch.linalg.svdvals(a.double())
    torch.testing.assert_close(s.double(), ref, rtol=1e-5, atol=1e-5)
    assert (s[:, :-1] >= s[:, 1:]).all()  # descending
    torch.testing.assert_close(u @ torch.diag_embed(s) @ vh, a, rtol=1e-4, atol=1e-4)
    eye = torch.eye(16).expand(6, 16, 16)
    torch.testing.assert_close(u.transpose(-1, -2) @ u, eye, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gram_eigh_svd_of_a_zero_matrix_has_finite_gradients(dtype):
    """An all-zero patch matrix (e.g. a constant image region after centring) gave NaN gradients:
    the eigen-gap regulariser underflowed to 0 and the backward divided 0 by 0."""
    a = torch.zeros(2, 6, 3, dtype=dtype, requires_grad=True)
    u, s, vh = gram_eigh_svd(a)
    assert torch.isfinite(s).all() and (s < 1e-20).all() and torch.equal(u, torch.zeros_like(u))
    (s.sum() + u.sum() + (vh * torch.randn_like(vh)).sum()).backward()
    assert torch.isfinite(a.grad).all()


def test_gram_eigh_svd_rejects_wide():
    with pytest.raises(ValueError, match="M ≥ N"):
        gram_eigh_svd(torch.randn(4, 8))


def test_gram_eigh_svd_gradcheck_generic():
    a = torch.randn(2, 10, 4, generator=gen(17), dtype=F64, requires_grad=True)

    def f(x):
        u, s, vh = gram_eigh_svd(x)
        # sign-invariant functions of the factors
        return s, u @ torch.diag_embed(s) @ vh, (u * u).sum(-1)

    assert torch.autograd.gradcheck(f, (a,))


def test_gram_eigh_svd_gradient_finite_with_near_equal_singular_values():
    # Sphere-normalised rows spread as evenly as possible: an orthonormal frame repeated 16 times
    # gives 16 exactly equal singular values; a tiny perturbation makes them near-equal.
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen(18), dtype=F64))
    rows = q.repeat(16, 1) + 1e-9 * torch.randn(256, 16, generator=gen(19), dtype=F64)
    m = torch.nn.functional.normalize(rows, dim=-1).float().requires_grad_()
    u, s, vh = gram_eigh_svd(m)
    assert (s.max() - s.min()) / s.max() < 1e-6
    loss = (u[:, :3] ** 3).sum() + s.sum() + (vh**3).sum()
    loss.backward()
    assert torch.isfinite(m.grad).all()
    # the plain eigh backward is not finite here — the point of the custom backward
    g = (m.detach().double().T @ m.detach().double()).requires_grad_()
    _, evecs = torch.linalg.eigh(g)
    (evecs**3).sum().backward()
    assert not torch.isfinite(g.grad).all() or g.grad.abs().max() > 1e6


# ---------------------------------------------------------------- whitening


def _conditioned(d: int, kappa: float, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=F64))
    ev = torch.logspace(0, math.log10(kappa), d, dtype=F64)
    return (q * ev) @ q.T


def test_inv_sqrt_psd_exact():
    c = _conditioned(32, 400.0)
    w = inv_sqrt_psd(c, eps=0.0)
    torch.testing.assert_close(w @ c @ w, torch.eye(32, dtype=F64), rtol=0, atol=1e-10)
    # rank-deficient input stays finite thanks to the floor
    x = torch.randn(8, 32, generator=gen(20), dtype=F64)
    assert torch.isfinite(inv_sqrt_psd(x.T @ x)).all()


@pytest.mark.parametrize("dim", [16, 64, 256])
def test_newton_schulz_needs_about_20_iterations_at_condition_400(dim):
    c = _conditioned(dim, 400.0, seed=dim)
    _, r10 = newton_schulz_inv_sqrt(c, iters=10, return_residual=True)
    w20, r20 = newton_schulz_inv_sqrt(c, iters=20, return_residual=True)
    assert r10.item() > 1e-2  # ten iterations leave small directions under-whitened
    assert r20.item() < 1e-8
    torch.testing.assert_close(w20, inv_sqrt_psd(c, eps=0.0), rtol=1e-6, atol=1e-8)


def test_newton_schulz_bad_input():
    with pytest.raises(ValueError):
        newton_schulz_inv_sqrt(torch.randn(3, 4))
    with pytest.raises(ValueError):
        newton_schulz_inv_sqrt(torch.eye(3), normalize="max")


# ---------------------------------------------------------------- Procrustes


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def test_procrustes_equals_scipy_on_equal_shapes():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    a = torch.randn(50, 12, generator=gen(21), dtype=F64)
    b = torch.randn(50, 12, generator=gen(22), dtype=F64)
    ours = orthogonal_procrustes(a, b, center=False).rotation.numpy()
    ref, _ = scipy_linalg.orthogonal_procrustes(a.numpy(), b.numpy())
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_procrustes_recovers_rotation_d512():
    d, n = 512, 4 * 512
    x = torch.randn(n, d, generator=gen(23), dtype=F64)
    q = _rotation(d, 24)
    y = x @ q + 0.01 * torch.randn(n, d, generator=gen(25), dtype=F64)
    fitted = orthogonal_procrustes(x, y)
    x_new = torch.randn(256, d, generator=gen(26), dtype=F64)
    cos = torch.nn.functional.cosine_similarity(fitted.apply(x_new), x_new @ q, dim=-1)
    assert cos.min().item() > 0.999


def test_procrustes_small_n_fast_path_d1280_n64():
    d, n, k = 1280, 64, 32
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=gen(27), dtype=F64))
    x = torch.randn(n, k, generator=gen(28), dtype=F64) @ basis.T  # data with a k-dim span
    q = _rotation(d, 29)
    y = x @ q + 1e-3 * torch.randn(n, d, generator=gen(30), dtype=F64)
    fast = orthogonal_procrustes(x, y, method="auto")
    full = orthogonal_procrustes(x, y, method="full")
    x_new = torch.randn(100, k, generator=gen(31), dtype=F64) @ basis.T
    cos = torch.nn.functional.cosine_similarity(fast.apply(x_new), x_new @ q, dim=-1)
    assert cos.min().item() > 0.999
    torch.testing.assert_close(fast.apply(x), full.apply(x), rtol=1e-8, atol=1e-8)  # same on the data


@pytest.mark.parametrize("d_s,d_t", [(64, 32), (32, 64), (48, 48)])
def test_procrustes_cross_dimension_isometric_cases(d_s, d_t):
    n = 400
    if d_s >= d_t:
        b = torch.randn(n, d_t, generator=gen(32), dtype=F64)
        r0 = torch.linalg.qr(torch.randn(d_s, d_t, generator=gen(33), dtype=F64))[0]  # orthonormal columns
        a = b @ r0.T
    else:
        a = torch.randn(n, d_s, generator=gen(34), dtype=F64)
        r0 = torch.linalg.qr(torch.randn(d_t, d_s, generator=gen(35), dtype=F64))[0].T  # orthonormal rows
        b = a @ r0
    fitted = orthogonal_procrustes(a, b, center=False)
    assert fitted.rotation.shape == (d_s, d_t)
    torch.testing.assert_close(fitted.rotation, r0, rtol=1e-8, atol=1e-8)
    r = fitted.rotation
    gram = r.T @ r if d_s >= d_t else r @ r.T
    torch.testing.assert_close(gram, torch.eye(min(d_s, d_t), dtype=F64), rtol=1e-10, atol=1e-10)


def test_procrustes_reflection_handling():
    a = torch.randn(100, 6, generator=gen(36), dtype=F64)
    flip = torch.eye(6, dtype=F64)
    flip[0, 0] = -1
    b = a @ flip
    free = orthogonal_procrustes(a, b, center=False)
    assert torch.linalg.det(free.rotation).item() < 0  # scipy convention: reflections allowed
    proper = orthogonal_procrustes(a, b, center=False, allow_reflection=False)
    assert torch.linalg.det(proper.rotation).item() > 0
    with pytest.raises(ValueError):
        orthogonal_procrustes(a[:, :4], b, allow_reflection=False)


def test_procrustes_whitened_and_shrinkage_and_centering():
    n, d = 500, 16
    a = torch.randn(n, d, generator=gen(37), dtype=F64) * torch.linspace(0.1, 3, d, dtype=F64) + 5.0
    q = _rotation(d, 38)
    b = a @ q - 2.0
    m = orthogonal_procrustes(a, b, whiten=True, shrinkage=0.0)
    torch.testing.assert_close(m.apply(a), b, rtol=1e-6, atol=1e-6)
    m2 = orthogonal_procrustes(a, b, whiten=True, shrinkage=0.5)
    assert torch.isfinite(m2.apply(a)).all()
    with pytest.raises(ValueError):
        orthogonal_procrustes(a, b, whiten=True, shrinkage=1.5)


def test_procrustes_map_save_load_and_errors(tmp_path):
    a = torch.randn(40, 8, generator=gen(39), dtype=F64)
    b = torch.randn(40, 5, generator=gen(40), dtype=F64)
    m = orthogonal_procrustes(a, b, scale=True)
    path = tmp_path / "map.safetensors"
    m.save(path)
    loaded = ProcrustesMap.load(path)
    torch.testing.assert_close(loaded.apply(a), m.apply(a))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        ProcrustesMap.load(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError):
        m.apply(torch.randn(3, 7))
    with pytest.raises(ValueError):
        orthogonal_procrustes(a, b[:30])
    nan = a.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError):
        orthogonal_procrustes(nan, b)
