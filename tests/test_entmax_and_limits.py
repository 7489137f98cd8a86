"""alpha-entmax against the `entmax` package, and the limits METHODS.md says must hold exactly."""

from __future__ import annotations

import pytest
import torch
from dash_eval.kernels import entmax, sparse_attention
from entmax import entmax_bisect


@pytest.mark.parametrize("alpha", [1.05, 1.25, 1.5, 1.75, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_entmax_matches_entmax_bisect(alpha, dtype):
    gen = torch.Generator().manual_seed(int(alpha * 100))
    z = (torch.randn(64, 33, generator=gen, dtype=torch.float64) * 3).to(dtype)
    ours = entmax(z, alpha)
    ref = entmax_bisect(z.double(), alpha=alpha, dim=-1, n_iter=200)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=tol)
    torch.testing.assert_close(ours.sum(-1).double(), torch.ones(64, dtype=torch.float64), rtol=0, atol=tol)
    if alpha >= 1.25:  # close to softmax, 1.05-entmax keeps every entry of these rows
        assert (ours == 0).any(), "entmax should be sparse on these inputs"


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_entmax_mask_and_empty_rows(alpha):
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.rand(5, 8, generator=torch.Generator().manual_seed(1)) > 0.4
    mask[2] = False  # a query with no candidate block
    p = entmax(z, alpha, mask)
    assert (p[~mask] == 0).all()
    assert (p[2] == 0).all()
    for row in (0, 1, 3, 4):
        if mask[row].any():
            ref = entmax_bisect(z[row, mask[row]].double(), alpha=alpha, dim=-1, n_iter=200)
            torch.testing.assert_close(p[row, mask[row]].double(), ref, rtol=0, atol=1e-5)
    assert not torch.isnan(p).any()


def test_entmax_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        entmax(torch.zeros(3), 1.0)


def _qkv(n=150, hq=8, hkv=2, d=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, h, n, d, generator=gen) for h in (hq, hkv, hkv))


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_dash_with_zero_scale_is_full(alpha):
    q, k, v = _qkv()
    full = sparse_attention(q, k, v, "full")
    out, stats = sparse_attention(q, k, v, "dash", alpha=alpha, scale=0.0, block_size=16, return_stats=True)
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-6)
    assert stats.sparsity == 0.0


@pytest.mark.parametrize("method", ["infllmv2", "nsa"])
def test_topk_covering_every_block_is_full(method):
    q, k, v = _qkv()
    full = sparse_attention(q, k, v, "full")
    out, stats = sparse_attention(
        q, k, v, method, block_size=16, kernel_size=8, kernel_stride=4, topk=10, return_stats=True
    )
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-6)
    assert stats.sparsity == 0.0


def test_sequence_shorter_than_one_block_is_full_for_every_method():
    q, k, v = _qkv(n=20)
    full = sparse_attention(q, k, v, "full")
    for method in ("dash", "infllmv2", "nsa"):
        out, stats = sparse_attention(q, k, v, method, return_stats=True)
        torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-6)
        assert stats.sparsity == 0.0 and (stats.active_blocks == 1).all()


def test_dash_active_blocks_vary_per_query_and_topk_do_not():
    q, k, v = _qkv(n=256, seed=3)
    _, dash = sparse_attention(q, k, v, "dash", block_size=16, scale=6.0, return_stats=True)
    _, inf = sparse_attention(q, k, v, "infllmv2", block_size=16, kernel_size=8, kernel_stride=4,
                              local_blocks=1, topk=3, return_stats=True)
    late = slice(5 * 16, None)  # queries with more than topk + forced candidates
    assert dash.active_blocks[..., late].float().std() > 0
    assert (inf.active_blocks[..., late] == 5).all()  # init 1 + local 1 + topk 3
