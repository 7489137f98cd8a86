"""DashAttention's block summaries in Triton (METHODS.md, dash, stage 1): each complete block of keys pooled by
the router's softmax (``kbar_j = sum_t softmax_t(u . k_t * softmax_scale) k_t``; mean-pooled without a router),
kept in float32 and, for 16-bit inputs, split into a 16-bit high part and a 16-bit residual for the routing's
tensor-core score products. Prefill summarises every complete block at once (``block_summaries``); decode keeps a
per-layer buffer and summarises only the blocks that became complete since (``allocate_summaries``,
``update_summaries``).
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from dash_eval.kernels._triton.launch import chain_options, last_dim_contiguous, next_pow2
from dash_eval.kernels._triton.ops import chain_start, dim_mask


@dataclasses.dataclass
class BlockSummaries:
    """Router-pooled block summaries: ``kbar`` float32 and, for 16-bit inputs, its hi/lo split."""

    kbar: torch.Tensor  # [B, Hkv, capacity, D] float32; the first ``count`` blocks are valid
    hi: torch.Tensor  # same shape, the inputs' dtype (or kbar itself for float32 inputs)
    lo: torch.Tensor | None
    count: int


@triton.jit
def _block_summary_kernel(
    K, ROUTER, KBAR, KHI, KLO, j0, capacity, router_scale,
    s_kb, s_kh, s_kn, HKV,
    C: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, HAS_ROUTER: tl.constexpr, SPLIT: tl.constexpr,
    PDL: tl.constexpr = False,
):
    chain_start(PDL)
    j = j0 + tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    t = j * C + tl.arange(0, C)
    d = tl.arange(0, DP)
    dmask = dim_mask(d, D, DP)
    k = tl.load(K + b * s_kb + h * s_kh + t[:, None] * s_kn + d[None, :], mask=dmask[None, :], other=0.0)
    k = k.to(tl.float32)
    if HAS_ROUTER:
        u = tl.load(ROUTER + h * D + d, mask=dmask, other=0.0).to(tl.float32)
        logit = tl.sum(k * u[None, :], 1) * router_scale
        w = tl.exp(logit - tl.max(logit, 0))
        w = w / tl.sum(w, 0)
        kbar = tl.sum(k * w[:, None], 0)
    else:
        kbar = tl.sum(k, 0) / C
    off = (bh * capacity + j) * D + d
    tl.store(KBAR + off, kbar, mask=dmask)
    if SPLIT:
        hi = kbar.to(KHI.dtype.element_ty)
        tl.store(KHI + off, hi, mask=dmask)
        tl.store(KLO + off, (kbar - hi.to(tl.float32)).to(KLO.dtype.element_ty), mask=dmask)


def allocate_summaries(k: torch.Tensor, capacity: int) -> BlockSummaries:
    b, hkv, _, d = k.shape
    kbar = torch.zeros(b, hkv, capacity, d, dtype=torch.float32, device=k.device)
    if k.dtype == torch.float32:
        return BlockSummaries(kbar, kbar, None, 0)
    hi = torch.zeros(b, hkv, capacity, d, dtype=k.dtype, device=k.device)
    return BlockSummaries(kbar, hi, torch.zeros_like(hi), 0)


def update_summaries(
    summ: BlockSummaries, k: torch.Tensor, router: torch.Tensor | None, block_size: int, softmax_scale: float
) -> BlockSummaries:
    """Summarise the blocks of ``k`` that became complete since ``summ.count`` (in place; decode appends)."""
    b, hkv, nk, d = k.shape
    nc = nk // block_size
    new = nc - summ.count
    if new <= 0:
        return summ
    if nc > summ.kbar.shape[2]:
        raise ValueError(f"summary capacity {summ.kbar.shape[2]} blocks < {nc} complete blocks")
    k = last_dim_contiguous(k)
    router_t = summ.kbar if router is None else router.to(device=k.device, dtype=torch.float32).contiguous()
    _block_summary_kernel[(new, b * hkv)](
        k, router_t, summ.kbar, summ.hi, summ.lo if summ.lo is not None else summ.hi,
        summ.count, summ.kbar.shape[2], softmax_scale,
        k.stride(0), k.stride(1), k.stride(2), hkv,
        C=block_size, D=d, DP=next_pow2(max(d, 16)), HAS_ROUTER=router is not None, SPLIT=summ.lo is not None,
        num_warps=4,
        **chain_options(k.device),
    )
    summ.count = nc
    return summ


def block_summaries(
    k: torch.Tensor, router: torch.Tensor | None, block_size: int, softmax_scale: float
) -> BlockSummaries:
    """``kbar_j = sum_t softmax_t(u . k_t * softmax_scale) k_t`` over the complete blocks (METHODS.md)."""
    nc = k.shape[2] // block_size
    return update_summaries(allocate_summaries(k, max(nc, 1)), k, router, block_size, softmax_scale)
