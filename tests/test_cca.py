"""generalized_cca: two views give exactly CCA; several views recover a shared signal."""

import pytest
import torch

from pentachora.geometry import generalized_cca


def _whiten(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(0)
    c = x.T @ x / x.shape[0]
    e, v = torch.linalg.eigh(c)
    return x @ v @ torch.diag(e.rsqrt()) @ v.T


def test_two_views_give_the_canonical_correlations():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 3, generator=g, dtype=torch.float64)
    a = _whiten(
        torch.cat([z, torch.randn(400, 5, generator=g, dtype=torch.float64)], 1)
        @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    )
    b = _whiten(
        torch.cat(
            [
                z + 0.5 * torch.randn(400, 3, generator=g, dtype=torch.float64),
                torch.randn(400, 3, generator=g, dtype=torch.float64),
            ],
            1,
        )
    )
    rho = torch.linalg.svdvals(a.T @ b / a.shape[0])  # canonical correlations of whitened views
    out = generalized_cca([a, b], k=6)
    torch.testing.assert_close(out.agreement, rho[:6], atol=1e-10, rtol=1e-10)
    assert out.values[0] > 1.7 and out.values[-1] < 1.2
    assert [m.shape for m in out.maps] == [(8, 6), (6, 6)]
    torch.testing.assert_close(out.weights.mean(), torch.tensor(1.0, dtype=torch.float64))


def test_three_views_share_one_space_where_paired_items_meet():
    g = torch.Generator().manual_seed(1)
    n, d = 300, 12
    z = torch.randn(n, d, generator=g)
    views = [
        _whiten(
            torch.cat([z, torch.randn(n, w, generator=g)], 1) @ torch.randn(d + w, d + w, generator=g)
            + 0.3 * torch.randn(n, d + w, generator=g)
        )
        for w in (6, 2, 10)
    ]
    out = generalized_cca(views, k=d)
    emb = [
        torch.nn.functional.normalize(v.double() @ m, dim=-1) for v, m in zip(views, out.maps, strict=True)
    ]
    for i in range(3):
        for j in range(i + 1, 3):
            r1 = (emb[i] @ emb[j].T).argmax(1).eq(torch.arange(n)).double().mean()
            assert r1 > 0.5, (i, j, r1)  # chance is 1/300
    # weighting silences directions only one view has
    out_all = generalized_cca(views, power=1.0)
    assert out_all.weights[-1] < 1e-3 * out_all.weights[0]


def test_bad_views_raise():
    with pytest.raises(ValueError, match="at least two views"):
        generalized_cca([torch.randn(5, 2)])
    with pytest.raises(ValueError, match="same number of rows"):
        generalized_cca([torch.randn(5, 2), torch.randn(6, 2)])
    with pytest.raises(ValueError, match="NaN"):
        generalized_cca([torch.randn(5, 2), torch.full((5, 2), float("nan"))])
    with pytest.raises(ValueError, match="k must be"):
        generalized_cca([torch.randn(5, 2), torch.randn(5, 2)], k=9)
