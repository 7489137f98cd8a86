"""NSA and InfLLM-V2 on the Triton backend (CPU interpreter) against the reference: outputs, stats and
the selection, including NSA's merged window, ties between blocks that share a kernel, and decode."""

from __future__ import annotations

import pytest
import torch

from tests.triton_interp import interpret_env, rel_err, triton_available  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.skipif(not triton_available, reason="triton is not importable"),
    pytest.mark.usefixtures("interpret_env"),
]

if triton_available:
    from dash_eval.kernels import sparse_attention

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}

# (B, Hq, Hkv, Nq, Nk, D)
SHAPES = [
    (1, 8, 2, 100, 100, 64),
    (2, 3, 1, 45, 45, 64),
    (1, 4, 4, 12, 12, 128),
    (1, 8, 1, 1, 150, 64),
]
PARAMS = {
    "infllmv2": [
        {"kernel_size": 4, "kernel_stride": 2, "init_blocks": 1, "local_blocks": 1, "topk": 1},
        {"kernel_size": 8, "kernel_stride": 4, "init_blocks": 0, "local_blocks": 2, "topk": 2},
    ],
    "nsa": [
        {"kernel_size": 4, "kernel_stride": 2, "init_blocks": 1, "local_blocks": 1, "topk": 1, "window": 0},
        {"kernel_size": 8, "kernel_stride": 4, "init_blocks": 1, "local_blocks": 2, "topk": 1, "window": 20},
    ],
}


def _cases():
    for method, settings in PARAMS.items():
        for pi in range(len(settings)):
            for b, hq, hkv, nq, nk, d in SHAPES:
                for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                    if dtype == torch.bfloat16 and (pi or nq == 1):
                        continue
                    case_id = f"{method}{pi}-B{b}-Nq{nq}-Nk{nk}-Hq{hq}-Hkv{hkv}-D{d}-{tag}"
                    yield pytest.param(method, pi, b, hq, hkv, nq, nk, d, dtype, id=case_id)


@pytest.mark.parametrize("method,pi,b,hq,hkv,nq,nk,d,dtype", list(_cases()))
def test_topk_triton_matches_reference(method, pi, b, hq, hkv, nq, nk, d, dtype):
    gen = torch.Generator().manual_seed(31 * pi + nk + hq)
    q = torch.randn(b, hq, nq, d, generator=gen).to(dtype)
    k, v = (torch.randn(b, hkv, nk, d, generator=gen).to(dtype) for _ in range(2))
    params = dict(PARAMS[method][pi], block_size=16)
    out, stats = sparse_attention(q, k, v, method, backend="triton", return_stats=True, **params)
    ref, ref_stats = sparse_attention(q, k, v, method, backend="reference", return_stats=True, **params)
    assert out.dtype == dtype and not torch.isnan(out).any()
    assert rel_err(out, ref) < TOL[dtype]
    assert stats.attended_pairs == ref_stats.attended_pairs
    assert stats.causal_pairs == ref_stats.causal_pairs
    assert stats.routing_scores == ref_stats.routing_scores
    assert torch.equal(stats.active_blocks, ref_stats.active_blocks)


@pytest.mark.parametrize("method", ["infllmv2", "nsa"])
def test_topk_default_geometry_selects_a_strict_subset(method):
    """Block 64, kernels 32/16 (the shared kernel between neighbours makes max-pooled ties), 400 keys."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, h, 400, 64, generator=gen) for h in (4, 1, 1))
    params = {"init_blocks": 1, "local_blocks": 1, "topk": 1}
    if method == "nsa":
        params["window"] = 64
    out, stats = sparse_attention(q, k, v, method, backend="triton", return_stats=True, **params)
    ref, ref_stats = sparse_attention(q, k, v, method, backend="reference", return_stats=True, **params)
    assert 0.2 < stats.sparsity < 0.9
    assert rel_err(out, ref) < TOL[torch.float32]
    assert torch.equal(stats.active_blocks, ref_stats.active_blocks)
