"""METHODS.md at its edges, found by an independent re-derivation of the contract: DashAttention's routed set
with alpha near 1 (a block inside the entmax support whose probability underflows stays routed), float64
routing for float64 inputs, no NaN from the Triton prior, and InfLLM-V2's kernel-to-block map
(``j*r - 1 .. j*r + r - 1``) when ``kernel_size`` is not ``2 * kernel_stride``."""

from __future__ import annotations

import math

import pytest
import torch
from dash_eval.kernels import sparse_attention
from dash_eval.kernels.entmax import entmax, entmax_with_support

from tests.triton_interp import (  # noqa: F401  (fixture)
    assert_triton_matches_reference,
    interpret_env,
    triton_available,
)

needs_triton = pytest.mark.skipif(not triton_available, reason="triton is not importable")


@pytest.mark.parametrize("alpha", [1.01, 1.05, 1.1])
def test_entmax_support_keeps_underflowing_entries(alpha):
    # x = (alpha - 1) z: the top entry is 1 above the threshold, the second `gap` above it, so its probability
    # gap ** (1 / (alpha - 1)) = 1e-50 underflows float32, yet the entry is inside the support.
    gap = 10 ** (-50 * (alpha - 1))
    z = torch.tensor([[1.0, gap, -1.0]]) / (alpha - 1)
    p, support = entmax_with_support(z, alpha)
    assert support.tolist() == [[True, True, False]]
    assert p[0, 1] == 0 and p[0, 0] == 1  # float32 output: the tiny probability is below float32's range
    p64, support64 = entmax_with_support(z.double(), alpha)
    assert support64.tolist() == [[True, True, False]]
    assert p64[0, 1].item() == pytest.approx(1e-50, rel=1e-3)
    assert torch.equal(entmax(z, alpha), p)


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_entmax_support_matches_nonzeros_where_nothing_underflows(alpha):
    torch.manual_seed(0)
    z = torch.randn(64, 40) * 3
    mask = torch.rand(64, 40) < 0.8
    p, support = entmax_with_support(z, alpha, mask)
    assert torch.equal(support, p > 0)


def _underflow_case(dtype=torch.float32, nk=65):
    """One KV head, block 16, four complete blocks before the last query (position 64). With alpha = 1.01 and
    scale 100 the routing logits ``x = (alpha - 1) z`` of blocks 0-3 are -1, 0.3, -1, 1: block 3 holds the
    mass, block 1 sits 0.3 above the threshold (p = 0.3 ** 100 = 5e-53, below float32's range) and blocks 0
    and 2 are out. The fine logits are 0.3 on block 1, 1 on block 3 and 0 on the query's own key; only block
    1's values are 1 (first dim)."""
    d, c = 16, 16
    k = torch.zeros(1, 1, nk, d, dtype=dtype)
    v = torch.zeros_like(k)
    for j, value in enumerate([-1.0, 0.3, -1.0, 1.0]):
        k[0, 0, j * c : (j + 1) * c, 0] = value
    v[0, 0, c : 2 * c, 0] = 1.0
    q = torch.zeros(1, 1, 1, d, dtype=dtype)
    q[0, 0, 0, 0] = 4.0  # q . k / sqrt(16) = k[0]
    expected = 16 * math.exp(0.3) / (16 * math.exp(0.3) + 16 * math.e + 1)
    return q, k, v, expected


# sigma: a prior too flat to move the expected value (the default's beta, about 6e-5 here, would)
UNDERFLOW_PARAMS = dict(alpha=1.01, scale=100.0, block_size=16, sigma=1e12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dash_reference_routes_a_block_whose_probability_underflows(dtype):
    q, k, v, expected = _underflow_case(dtype)
    out, stats = sparse_attention(q, k, v, "dash", backend="reference", return_stats=True, **UNDERFLOW_PARAMS)
    assert out[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)
    assert stats.active_blocks.flatten().tolist() == [3]  # blocks 1 and 3 routed, block 4 forced
    assert int(stats.attended_pairs) == 33


@needs_triton
@pytest.mark.usefixtures("interpret_env")
@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
def test_dash_triton_routes_a_block_whose_probability_underflows(prefill):
    q, k, v, expected = _underflow_case()
    if prefill:  # the same query as the last of a prefill over all 65 tokens
        q = torch.cat([torch.zeros(1, 1, 64, 16), q], dim=2)
    out, stats = sparse_attention(q, k, v, "dash", backend="triton", return_stats=True, **UNDERFLOW_PARAMS)
    assert out[0, 0, -1, 0].item() == pytest.approx(expected, rel=1e-5)
    assert stats.active_blocks[0, 0, -1].item() == 3
    assert_triton_matches_reference(q, k, v, "dash", 2e-5, **UNDERFLOW_PARAMS)
    # a strong prior: the routed block's log pbar taken at float32's smallest normal by both backends
    assert_triton_matches_reference(q, k, v, "dash", 2e-5, **dict(UNDERFLOW_PARAMS, sigma=1.0))


@needs_triton
@pytest.mark.usefixtures("interpret_env")
@pytest.mark.parametrize("seed", [0, 2])
def test_dash_triton_prior_has_no_nan_near_alpha_one(seed):
    # Large routing logits at alpha 1.01: on a block past some query's own block, the prior's power overflowed
    # to inf and gave NaN rows (the fine stage rebuilds the prior for every row of a tile).
    torch.manual_seed(seed)
    q, k, v = torch.randn(1, 1, 64, 16) * 3, torch.randn(1, 1, 64, 16), torch.randn(1, 1, 64, 16)
    assert_triton_matches_reference(q, k, v, "dash", 2e-5, alpha=1.01, scale=256.0, block_size=16, sigma=1.0)


def test_dash_float64_routes_in_float64():
    # One query, sparsemax over two past blocks, a prior that moves the output (sigma = 0.5): by hand in float64.
    d, c = 4, 2
    k = torch.zeros(1, 1, 5, d, dtype=torch.float64)
    k[0, 0, 0:2, 0] = 0.3
    k[0, 0, 2:4, 0] = 0.1
    v = torch.randn(1, 1, 5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q = torch.zeros(1, 1, 1, d, dtype=torch.float64)
    q[0, 0, 0, 0] = 2.0
    sigma = 0.5
    out = sparse_attention(q, k, v, "dash", backend="reference", alpha=2.0, block_size=c, sigma=sigma)
    z = torch.tensor([0.3, 0.1], dtype=torch.float64) * 2.0 / 2.0  # s * q . kbar / sqrt(D)
    tau = (z.sum() - 1) / 2  # both blocks in sparsemax's support
    p = z - tau
    log_p = p.log()
    beta = (log_p - log_p.mean()) / sigma
    logits = (q[0, 0, 0] @ k[0, 0].T) / 2.0
    logits[:4] += beta.repeat_interleave(c)
    expected = torch.softmax(logits, 0) @ v[0, 0]
    torch.testing.assert_close(out[0, 0, 0], expected, rtol=1e-12, atol=1e-12)


def _infllmv2_tie_case(c: int):
    """Kernel size = stride = block size (r = 1): block j pools kernels j - 1 and j. Kernel 1 scores highest,
    so blocks 1 and 2 tie and the more recent, block 2, is selected; only block 2's values are 1."""
    d = 16
    nk = 3 * c + 1
    k = torch.zeros(1, 1, nk, d)
    v = torch.zeros_like(k)
    k[0, 0, c : 2 * c, 0] = 3.0
    v[0, 0, 2 * c : 3 * c, 0] = 1.0
    q = torch.zeros(1, 1, 1, d)
    q[0, 0, 0, 0] = 2.0
    params = dict(block_size=c, kernel_size=c, kernel_stride=c, topk=1, init_blocks=0, local_blocks=1)
    return q, k, v, params, c / (c + 1)  # block 2's keys and the query's own, all at logit 0


def test_infllmv2_reference_pools_the_previous_blocks_last_kernel():
    q, k, v, params, expected = _infllmv2_tie_case(4)
    out = sparse_attention(q, k, v, "infllmv2", backend="reference", **params)
    assert out[0, 0, 0, 0].item() == pytest.approx(expected)


@needs_triton
@pytest.mark.usefixtures("interpret_env")
def test_infllmv2_triton_pools_the_previous_blocks_last_kernel():
    q, k, v, params, expected = _infllmv2_tie_case(16)
    for qq in (q, torch.cat([torch.zeros(1, 1, 48, 16), q], dim=2)):  # decode, then prefill
        out = sparse_attention(qq, k, v, "infllmv2", backend="triton", **params)
        assert out[0, 0, -1, 0].item() == pytest.approx(expected, rel=1e-5)


@needs_triton
@pytest.mark.usefixtures("interpret_env")
@pytest.mark.parametrize("kernel_size", [16, 48])
@pytest.mark.parametrize("nq", [1, 150])
def test_infllmv2_triton_kernel_map_off_the_default_ratio(kernel_size, nq):
    torch.manual_seed(1)
    q = torch.randn(1, 4, nq, 32)
    k, v = torch.randn(1, 1, 150, 32), torch.randn(1, 1, 150, 32)
    params = dict(block_size=32, kernel_size=kernel_size, kernel_stride=16, topk=2, init_blocks=1, local_blocks=1)
    assert_triton_matches_reference(q, k, v, "infllmv2", 2e-5, **params)


def test_block_kernels_with_no_kernel_stay_on_the_scores_device():
    """A sequence (or a padded row's real part) shorter than one kernel has no kernel key; the references' pooling
    built its empty visibility mask on the CPU, so on a GPU nsa / infllmv2 stopped with a device mismatch (found by
    scripts/gpu_fuzz.py on an H200: a padded decode row with fewer real tokens than kernel_size=128). The meta device
    stands in for the GPU here."""
    from dash_eval.kernels.compression import gather_block_kernels

    scores = torch.empty(1, 2, 5, 0, device="meta")
    visible = torch.empty(5, 0, dtype=torch.bool, device="meta")
    per_block, vis, overlap = gather_block_kernels(scores, visible, 100, 32, 128, 32, 1)
    assert per_block.device == vis.device == overlap.device == scores.device
    assert tuple(vis.shape) == (5, 4, 2) and tuple(per_block.shape) == (1, 2, 5, 4, 2)
