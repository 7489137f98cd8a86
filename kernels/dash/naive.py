"""Reference DashAttention (METHODS.md, "dash"): router-pooled block summaries, alpha-entmax block
routing shared by the GQA group, and the prior-biased sparse softmax over the chosen blocks."""

from __future__ import annotations

import torch
from dash_eval.kernels.common import chunked_sparse_attention, forced_blocks, num_blocks
from dash_eval.kernels.entmax import entmax_with_support
from dash_eval.kernels.stats import AttentionStats


def dash_block_summaries(
    k: torch.Tensor, router: torch.Tensor | None, block_size: int, softmax_scale: float
) -> torch.Tensor:
    """``kbar: [B, Hkv, nc, D]`` for the ``nc = Nk // block_size`` complete blocks, in float32 (float64 for
    float64 keys): ``kbar_j = sum_t softmax_t(u_h . k_t * softmax_scale) k_t``; ``router=None`` means ``u = 0``
    (mean)."""
    b, hkv, nk, d = k.shape
    nc = nk // block_size
    kb = k[:, :, : nc * block_size].to(routing_dtype(k.dtype)).view(b, hkv, nc, block_size, d)
    if router is None:
        return kb.mean(-2)
    u = router.to(kb.dtype).reshape(hkv, d)
    w = torch.softmax(torch.einsum("bhjcd,hd->bhjc", kb, u) * softmax_scale, dim=-1)
    return torch.einsum("bhjc,bhjcd->bhjd", w, kb)


def routing_dtype(dtype: torch.dtype) -> torch.dtype:
    """The routing's precision: float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def dash_route(
    qg: torch.Tensor,
    kbar: torch.Tensor,
    positions: torch.Tensor,
    nblocks: int,
    *,
    alpha: float,
    scale: float,
    sigma: float,
    init_blocks: int,
    local_blocks: int,
    block_size: int,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Route a chunk of queries ``qg: [B, Hkv, G, L, D]`` at ``positions: [L]``.

    Returns ``selected [B, Hkv, L, nblocks]`` (routed or forced), ``bias`` (the prior ``beta``, 0 on
    forced and unselected blocks) and ``pbar [B, Hkv, L, nc]`` (group-mean entmax probabilities).

    ``R_i`` is ``pbar > 0`` in exact arithmetic: the union of the heads' supports, decided on each head's
    threshold, so a routed block whose probability underflows (alpha near 1) stays routed. Its ``log pbar``
    is taken at the dtype's smallest normal, as the kernels take it.
    """
    nc = kbar.shape[2]
    qblock = positions // block_size
    candidates = torch.arange(nc, device=qg.device)[None, :] < qblock[:, None]  # [L, nc]
    z = torch.einsum("bhgld,bhjd->bhglj", qg.to(kbar.dtype), kbar) * (scale * softmax_scale)
    p, support = entmax_with_support(z, alpha, candidates[None, None, None])
    pbar = p.mean(2)
    routed = support.any(2)
    forced = forced_blocks(qblock, nblocks, init_blocks, local_blocks)
    selected = forced[None, None].expand(*pbar.shape[:2], -1, -1).clone()
    selected[..., :nc] |= routed
    log_p = torch.where(routed, pbar.clamp(min=torch.finfo(pbar.dtype).tiny).log(), torch.zeros_like(pbar))
    mean_log = log_p.sum(-1, keepdim=True) / routed.sum(-1, keepdim=True).clamp(min=1)
    beta = torch.where(routed & ~forced[:, :nc], (log_p - mean_log) / sigma, torch.zeros_like(pbar))
    bias = torch.zeros(selected.shape, dtype=pbar.dtype, device=qg.device)
    bias[..., :nc] = beta
    return selected, bias, pbar


def dash_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    alpha: float = 1.5,
    block_size: int = 64,
    scale: float = 1.0,
    sigma: float = 1e6,
    init_blocks: int = 0,
    local_blocks: int = 1,
    router: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    return_stats: bool = False,
) -> tuple[torch.Tensor, AttentionStats | None]:
    softmax_scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    nk = k.shape[2]
    nblocks = num_blocks(nk, block_size)
    kbar = dash_block_summaries(k, router, block_size, softmax_scale)
    g = q.shape[1] // k.shape[1]

    def select(qg_chunk: torch.Tensor, pos: torch.Tensor):
        selected, bias, _ = dash_route(
            qg_chunk, kbar, pos, nblocks, alpha=alpha, scale=scale, sigma=sigma, init_blocks=init_blocks,
            local_blocks=local_blocks, block_size=block_size, softmax_scale=softmax_scale,
        )
        routing_scores = int((pos // block_size).sum()) * g * q.shape[0] * k.shape[1]
        return selected, bias, routing_scores

    return chunked_sparse_attention(
        q, k, v, select, block_size=block_size, softmax_scale=softmax_scale, return_stats=return_stats
    )
