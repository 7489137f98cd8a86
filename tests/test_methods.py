"""Every method against the independent brute-force loops of tests/bruteforce.py (METHODS.md)."""

from __future__ import annotations

import pytest
import torch
from dash_eval.kernels import sparse_attention

from tests.bruteforce import BRUTEFORCE

# (N, Hq, Hkv, D, block_size): lengths off the block grid, below one block, GQA 1, 3, 4, 8.
SHAPES = [
    (40, 4, 4, 16, 8),
    (37, 6, 2, 16, 8),
    (5, 4, 1, 16, 8),
    (53, 8, 2, 32, 16),
    (64, 8, 1, 16, 16),
]

# Small-context settings of each method (the defaults need thousands of tokens to select anything).
METHOD_PARAMS = {
    "full": [{}],
    "dash": [
        {"alpha": 1.5, "scale": 4.0},
        {"alpha": 2.0, "scale": 2.0, "init_blocks": 1, "local_blocks": 2},
        {"alpha": 1.25, "scale": 6.0, "sigma": 0.5},
        {"alpha": 1.75, "scale": 3.0, "sigma": 1.0, "local_blocks": 2},
    ],
    "infllmv2": [
        {"kernel_size": 4, "kernel_stride": 2, "init_blocks": 1, "local_blocks": 1, "topk": 1},
        {"kernel_size": 8, "kernel_stride": 4, "init_blocks": 0, "local_blocks": 2, "topk": 2},
        # kernel_size off 2 * kernel_stride: still kernels j*r - 1 .. j*r + r - 1 (METHODS.md)
        {"kernel_size": 2, "kernel_stride": 2, "init_blocks": 1, "local_blocks": 1, "topk": 1},
        {"kernel_size": 6, "kernel_stride": 2, "init_blocks": 0, "local_blocks": 1, "topk": 2},
    ],
    "nsa": [
        {"kernel_size": 4, "kernel_stride": 2, "init_blocks": 1, "local_blocks": 1, "topk": 1, "window": 0},
        {"kernel_size": 8, "kernel_stride": 4, "init_blocks": 1, "local_blocks": 2, "topk": 1, "window": 5},
        {"kernel_size": 6, "kernel_stride": 2, "init_blocks": 1, "local_blocks": 1, "topk": 1, "window": 0},
        # a window reaching past the forced blocks (window 5 above lies inside local_blocks=2 at every block size
        # here, so it never adds a token): the merged window itself held to METHODS.md
        {"kernel_size": 4, "kernel_stride": 2, "init_blocks": 0, "local_blocks": 1, "topk": 1, "window": 11},
    ],
}

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def _cases():
    for method, settings in METHOD_PARAMS.items():
        for si, params in enumerate(settings):
            for n, hq, hkv, d, c in SHAPES:
                for dtype in (torch.float32, torch.bfloat16):
                    tag = "fp32" if dtype == torch.float32 else "bf16"
                    case_id = f"{method}{si}-N{n}-Hq{hq}-Hkv{hkv}-D{d}-C{c}-{tag}"
                    yield pytest.param(method, dict(params, block_size=c), n, hq, hkv, d, dtype, id=case_id)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize("method,params,n,hq,hkv,d,dtype", list(_cases()))
def test_against_bruteforce(method, params, n, hq, hkv, d, dtype):
    gen = torch.Generator().manual_seed(hash((method, n, hq, hkv, d)) % 2**31)
    q, k, v = (torch.randn(2, h, n, d, generator=gen).to(dtype) for h in (hq, hkv, hkv))
    router = None
    if method == "dash" and params.get("sigma", 1e6) < 10:
        router = torch.randn(hkv * d, generator=gen)  # a trained-looking router on the sharper settings
        params = dict(params, router=router)
    out, stats = sparse_attention(q, k, v, method, backend="reference", return_stats=True, **params)
    ref_out, attended, causal = BRUTEFORCE[method](q, k, v, **params)
    assert not torch.isnan(out).any()
    assert _rel_err(out, ref_out) < TOL[dtype]
    if dtype == torch.float32:
        assert stats.attended_pairs == attended
        assert stats.causal_pairs == causal
        assert stats.sparsity == pytest.approx(1 - attended / causal)


@pytest.mark.parametrize("method", ["dash", "infllmv2", "nsa"])
def test_sparse_settings_really_skip_work(method):
    """The settings above must select a strict subset somewhere, or the comparison proves little."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 64, 16, generator=gen) for h in (4, 2, 2))
    params = dict(METHOD_PARAMS[method][0], block_size=8)
    _, stats = sparse_attention(q, k, v, method, return_stats=True, **params)
    assert 0.05 < stats.sparsity < 1.0


@pytest.mark.parametrize("block_size", [8, 16])
def test_nsa_window_setting_attends_tokens_its_blocks_do_not(block_size):
    """The bruteforce comparison checks NSA's merged window only where the window reaches past the selected blocks;
    the window setting must do so (at both block sizes of SHAPES), or an off-by-one in the window passes unseen."""
    params = dict(METHOD_PARAMS["nsa"][-1], block_size=block_size)
    assert params["window"] > 0
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 53, 16, generator=gen) for h in (4, 2, 2))
    _, with_window = sparse_attention(q, k, v, "nsa", return_stats=True, **params)
    _, without = sparse_attention(q, k, v, "nsa", return_stats=True, **dict(params, window=0))
    assert with_window.attended_pairs > without.attended_pairs


@pytest.mark.parametrize("method,params", [
    ("dash", {"alpha": 1.5, "scale": 4.0, "block_size": 8}),
    ("infllmv2", {"kernel_size": 4, "kernel_stride": 2, "local_blocks": 1, "topk": 2, "block_size": 8}),
    ("nsa", {"kernel_size": 4, "kernel_stride": 2, "topk": 1, "window": 3, "block_size": 8}),
    ("full", {}),
])
def test_decode_equals_last_prefill_rows(method, params):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, h, 45, 16, generator=gen) for h in (6, 2, 2))
    full_out, full_stats = sparse_attention(q, k, v, method, return_stats=True, **params)
    for nq in (1, 3):
        out, stats = sparse_attention(q[:, :, -nq:], k, v, method, return_stats=True, **params)
        torch.testing.assert_close(out, full_out[:, :, -nq:], rtol=1e-5, atol=1e-6)
        assert torch.equal(stats.active_blocks, full_stats.active_blocks[:, :, -nq:])


@pytest.mark.parametrize("method,params", [
    ("dash", {"alpha": 1.5, "scale": 4.0, "block_size": 8}),
    ("infllmv2", {"kernel_size": 4, "kernel_stride": 2, "local_blocks": 1, "topk": 2, "block_size": 8}),
    ("nsa", {"kernel_size": 4, "kernel_stride": 2, "topk": 1, "window": 3, "block_size": 8}),
])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_row_equals_row_alone(method, params, side):
    gen = torch.Generator().manual_seed(2)
    n, pad = 40, 13
    q, k, v = (torch.randn(2, h, n, 16, generator=gen) for h in (4, 2, 2))
    valid = torch.ones(2, n, dtype=torch.bool)
    real = slice(pad, n) if side == "left" else slice(0, n - pad)
    valid[1] = False
    valid[1, real] = True
    out, stats = sparse_attention(q, k, v, method, kv_valid=valid, return_stats=True, **params)
    alone, alone_stats = sparse_attention(
        q[1:, :, real], k[1:, :, real], v[1:, :, real], method, return_stats=True, **params
    )
    torch.testing.assert_close(out[1, :, real], alone[0], rtol=1e-5, atol=1e-6)
    assert not torch.isnan(out).any()
    pad_rows = torch.ones(n, dtype=torch.bool)
    pad_rows[real] = False
    assert (out[1, :, pad_rows] == 0).all()
    assert (stats.active_blocks[1, :, pad_rows] == 0).all()
    assert torch.equal(stats.active_blocks[1, :, real], alone_stats.active_blocks[0])
    first, first_stats = sparse_attention(q[:1], k[:1], v[:1], method, return_stats=True, **params)
    assert stats.attended_pairs == first_stats.attended_pairs + alone_stats.attended_pairs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["full", "dash", "infllmv2", "nsa"])
def test_dtypes_and_head_dims_no_nan(method, dtype):
    gen = torch.Generator().manual_seed(3)
    for d in (64, 96, 128):
        q, k, v = (torch.randn(1, h, 70, d, generator=gen).to(dtype) for h in (4, 1, 1))
        out = sparse_attention(q, k, v, method, block_size=16)
        assert out.dtype == dtype and out.shape == q.shape
        assert not torch.isnan(out).any()


def test_closed_form_counts_match_their_loops():
    """The routing-score counts in closed form (a decode step's stats used to loop over every query in Python)."""
    import itertools

    from dash_eval.kernels._triton.accounting import block_index_sum, visible_kernel_pairs
    from dash_eval.kernels.stats import causal_pairs_of

    for first, stop, c in itertools.product(range(0, 40, 3), range(0, 90, 7), (1, 4, 16, 64)):
        if stop >= first:
            assert block_index_sum(first, stop, c) == sum(p // c for p in range(first, stop))
            assert causal_pairs_of(first, stop - first) == sum(p + 1 for p in range(first, stop))
    for first, stop, count, stride, size in itertools.product(range(0, 60, 5), range(0, 120, 9), (0, 1, 3, 7),
                                                              (1, 4, 16), (1, 4, 16, 32)):
        if stop >= first:
            ends = [j * stride + size - 1 for j in range(count)]
            loop = sum(e <= p for p in range(first, stop) for e in ends)
            assert visible_kernel_pairs(first, stop, count, stride, size) == loop


def test_full_decode_runs_without_the_cudnn_backend_on_cuda(monkeypatch):
    """A decode step of ``full`` meets a new key length every time, for which cuDNN's SDPA backend builds a plan
    (about 72 ms on an H200): on CUDA its one-query call switches that backend off and leaves the others as the
    caller set them (here math switched off by the caller stays off). Masked calls (a chunk of new queries, the
    references' block-sparse softmax) and a prefill keep PyTorch's own choice: with GQA and a mask only cuDNN and
    math take them. Checked with queries that report themselves as CUDA tensors."""
    import torch.nn.functional as F
    from dash_eval.kernels import common

    seen = []
    real = F.scaled_dot_product_attention
    cuda = torch.backends.cuda

    def recording(q, k, v, **kwargs):
        if type(q) is not torch.Tensor:
            seen.append((q.shape[2], cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.math_sdp_enabled()))
        return real(q.as_subclass(torch.Tensor), k, v, **kwargs)

    class CudaLooking(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    monkeypatch.setattr(common.F, "scaled_dot_product_attention", recording)
    gen = torch.Generator().manual_seed(3)
    k, v = (torch.randn(1, 2, 40, 16, generator=gen) for _ in range(2))
    flags = (cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.math_sdp_enabled())
    cuda.enable_cudnn_sdp(True)
    cuda.enable_math_sdp(False)
    try:
        for nq in (1, 3, 40):
            q = torch.randn(1, 4, nq, 16, generator=gen)
            out = sparse_attention(q.as_subclass(CudaLooking), k, v, "full", backend="reference")
            expect = sparse_attention(q, k, v, "full", backend="reference")
            assert torch.allclose(out.as_subclass(torch.Tensor), expect)
            assert cuda.cudnn_sdp_enabled() and not cuda.math_sdp_enabled()  # restored after each call
        n_full = len(seen)
        params = {"block_size": 8, "kernel_size": 8, "kernel_stride": 4, "topk": 1, "local_blocks": 1}
        q = torch.randn(1, 4, 40, 16, generator=gen)
        out = sparse_attention(q.as_subclass(CudaLooking), k, v, "infllmv2", backend="reference", **params)
        assert torch.allclose(out.as_subclass(torch.Tensor),
                              sparse_attention(q, k, v, "infllmv2", backend="reference", **params))
    finally:
        cuda.enable_cudnn_sdp(flags[0])
        cuda.enable_flash_sdp(flags[1])
        cuda.enable_math_sdp(flags[2])
    assert seen[:n_full] == [(1, False, flags[1], False), (3, True, flags[1], False), (40, True, flags[1], False)]
    assert seen[n_full:] and all(cudnn for _, cudnn, _, _ in seen[n_full:]), seen[n_full:]


@pytest.mark.parametrize("sigma", [1e-3, 1e-30])
def test_dash_small_sigma_in_float16_matches_float32(sigma):
    """dash's prior reaches 87.34 / sigma, past float16's largest value (65504) for sigma below ~1e-3: the reference
    must not let the cast of its logit bias to float16 overflow (it turned the strongest blocks' bias into inf)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 128, 64, generator=gen) for h in (4, 2, 2))
    params = dict(block_size=16, sigma=sigma)
    ref = sparse_attention(q, k, v, "dash", backend="reference", **params)
    out = sparse_attention(q.half(), k.half(), v.half(), "dash", backend="reference", **params)
    assert not torch.isnan(out).any()
    assert _rel_err(out, ref.double()) < 5e-3


def test_full_runs_sdpa_under_backend_triton(tiny):
    """``full`` has no kernel of its own (SDPA is one): ``backend="triton"`` computes it as the reference does, so that
    a model patched with ``backend="triton"`` (a sweep's ``attn_backend: triton``) runs its dense baseline's decode
    steps and padded batches, which reach ``sparse_attention``; they raised 'method 'full' has no Triton backend'."""
    pytest.importorskip("triton")
    from dash_eval.dash_models import patch_attention

    from tests.triton_interp import triton_available

    assert triton_available
    gen = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(2, 4, 1, 16, generator=gen), *(torch.randn(2, 2, 20, 16, generator=gen) for _ in range(2))
    kv_valid = torch.ones(2, 20, dtype=torch.bool)
    kv_valid[0, :7] = False
    out, stats = sparse_attention(q, k, v, "full", backend="triton", kv_valid=kv_valid, return_stats=True)
    ref, ref_stats = sparse_attention(q, k, v, "full", backend="reference", kv_valid=kv_valid, return_stats=True)
    assert torch.equal(out, ref) and stats.attended_pairs == ref_stats.attended_pairs
    ids = torch.randint(3, 97, (1, 12), generator=gen)
    with patch_attention(tiny, "full", backend="triton"):
        patched = tiny.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(patched, tiny.generate(ids, max_new_tokens=3, do_sample=False))


@pytest.mark.parametrize("method,params", [
    ("dash", {"alpha": 1.5, "scale": 4.0, "block_size": 8}),
    ("infllmv2", {"kernel_size": 4, "kernel_stride": 2, "local_blocks": 1, "topk": 2, "block_size": 8}),
    ("nsa", {"kernel_size": 4, "kernel_stride": 2, "topk": 1, "window": 3, "block_size": 8}),
    ("full", {}),
])
def test_per_row_counts_of_an_unpadded_batch_are_each_rows_own(method, params):
    """``attended_per_row`` / ``causal_per_row`` (what lm-eval's per-request sparsity reads) of an unpadded batch of
    two rows equal each row's counts alone and add up to the totals; padded batches run row by row, so only an
    unpadded batch of several rows checks them."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, h, 37, 16, generator=gen) for h in (4, 2, 2))
    _, stats = sparse_attention(q, k, v, method, return_stats=True, **params)
    for row in range(2):
        _, alone = sparse_attention(q[row:row + 1], k[row:row + 1], v[row:row + 1], method, return_stats=True,
                                    **params)
        assert int(stats.attended_per_row[row]) == alone.attended_pairs
        assert int(stats.causal_per_row[row]) == alone.causal_pairs
    assert int(stats.attended_per_row.sum()) == stats.attended_pairs
    assert int(stats.causal_per_row.sum()) == stats.causal_pairs


@pytest.mark.parametrize("method,params", [
    ("dash", {"alpha": 1.5, "scale": 4.0, "block_size": 8}),
    ("nsa", {"kernel_size": 4, "kernel_stride": 2, "topk": 1, "window": 3, "block_size": 8}),
])
def test_padded_chunk_of_new_queries_equals_rows_alone(method, params):
    """A chunk of 3 new queries over a left-padded batch whose second row's real keys start one position before the
    chunk: its three queries are all real, and each row's output and stats equal the row alone (slicing the chunk
    from the row's first real key instead of the chunk's first query kept only the last query)."""
    gen = torch.Generator().manual_seed(7)
    nk, nq = 40, 3
    q = torch.randn(2, 4, nq, 16, generator=gen)
    k, v = (torch.randn(2, 2, nk, 16, generator=gen) for _ in range(2))
    valid = torch.ones(2, nk, dtype=torch.bool)
    start = nk - nq - 1
    valid[1, :start] = False
    out, stats = sparse_attention(q, k, v, method, kv_valid=valid, return_stats=True, **params)
    alone, alone_stats = sparse_attention(q[1:], k[1:, :, start:], v[1:, :, start:], method, return_stats=True,
                                          **params)
    torch.testing.assert_close(out[1], alone[0], rtol=1e-5, atol=1e-6)
    assert stats.valid_queries[1].all()
    assert torch.equal(stats.active_blocks[1], alone_stats.active_blocks[0])
    assert int(stats.attended_per_row[1]) == alone_stats.attended_pairs
