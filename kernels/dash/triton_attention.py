"""``dash`` on the Triton backend: summaries, on-chip routing, then the block-sparse fine stage with the
prior rebuilt on the fly. Inputs the kernels do not take (float64, a block size that is not 16, 32, 64
or 128, head dims above 256) go to the reference."""

from __future__ import annotations

import torch
from dash_eval.kernels._triton.accounting import block_index_sum, stats_from_counts
from dash_eval.kernels._triton.block_sparse import (
    DashPrior,
    decode_splits,
    routed_visit_list,
    sparse_attention_from_words,
)
from dash_eval.kernels._triton.launch import kernel_supports
from dash_eval.kernels.dash import layer_router
from dash_eval.kernels.dash.triton_routing import dash_route
from dash_eval.kernels.dash.triton_summaries import BlockSummaries, block_summaries
from dash_eval.kernels.registry import get_method
from dash_eval.kernels.stats import AttentionStats


def _router(params, k: torch.Tensor) -> torch.Tensor | None:
    return layer_router(params.router, k)


def dash_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    params,
    *,
    softmax_scale: float,
    return_stats: bool,
    summaries: BlockSummaries | None = None,
    tile_q: int | None = None,
    splits: int | None = None,
) -> tuple[torch.Tensor, AttentionStats | None]:
    """DashAttention forward (METHODS.md "dash"). ``summaries`` may carry a decode cache's block
    summaries (``triton_summaries.update_summaries``); otherwise they are computed from ``k``."""
    if kernel_supports(q, params.block_size) is not None:
        return get_method("dash").reference(q, k, v, params, softmax_scale=softmax_scale, return_stats=return_stats)
    nk, c = k.shape[2], params.block_size
    if summaries is None:
        summaries = block_summaries(k, _router(params, k), c, softmax_scale)
    route = dash_route(
        q, summaries, nk, alpha=params.alpha, scale=params.scale, softmax_scale=softmax_scale,
        init_blocks=params.init_blocks, local_blocks=params.local_blocks, block_size=c, sigma=params.sigma,
    )
    prior = DashPrior(
        kbar=summaries.kbar, tau=route.tau, mean_log=route.mean_log, max_beta=route.max_beta,
        route_scale=(params.alpha - 1.0) * params.scale * softmax_scale, alpha=params.alpha, sigma=params.sigma,
        init_blocks=params.init_blocks, local_blocks=params.local_blocks,
    )
    if splits is None:
        splits = decode_splits(q, k, c)
    tiles, tile_q = routed_visit_list(route, tile_q)
    out = sparse_attention_from_words(
        q, k, v, route.words, block_size=c, softmax_scale=softmax_scale, prior=prior, tile_q=tile_q, splits=splits,
        tiles=tiles,
    )
    stats = None
    if return_stats:
        b, hq, nq, _ = q.shape
        g = hq // k.shape[1]
        cur_sum = block_index_sum(nk - nq, nk, c)
        stats = stats_from_counts(route.active, route.attended, nk, c, cur_sum * g * b * k.shape[1])
    return out, stats
