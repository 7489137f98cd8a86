"""The Triton forward of the two top-k methods: kernel keys, on-chip top-k routing, the fine stage."""

from __future__ import annotations

import torch
from dash_eval.kernels._triton.accounting import stats_from_counts
from dash_eval.kernels._triton.block_sparse import sparse_attention_from_words
from dash_eval.kernels._triton.launch import kernel_supports
from dash_eval.kernels._triton.topk_routing import topk_route
from dash_eval.kernels.compression import kernel_keys
from dash_eval.kernels.registry import get_method
from dash_eval.kernels.stats import AttentionStats


def topk_attention_triton(
    method: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params, *, pool: int, window: int,
    softmax_scale: float, return_stats: bool, tile_q: int | None = None, splits: int | None = None,
) -> tuple[torch.Tensor, AttentionStats | None]:
    if kernel_supports(q, params.block_size) is not None or params.block_size % params.kernel_stride:
        return get_method(method).reference(q, k, v, params, softmax_scale=softmax_scale, return_stats=return_stats)
    from dash_eval.kernels.dash.triton_attention import decode_splits

    b, hq, nq, _ = q.shape
    nk, c = k.shape[2], params.block_size
    kc = kernel_keys(k.float(), params.kernel_size, params.kernel_stride)
    route = topk_route(
        q, kc, nk, pool=pool, block_size=c, kernel_size=params.kernel_size, kernel_stride=params.kernel_stride,
        init_blocks=params.init_blocks, local_blocks=params.local_blocks, topk=params.topk,
        softmax_scale=softmax_scale, window=window,
    )
    if splits is None:
        splits = decode_splits(q, k, c)
    out = sparse_attention_from_words(
        q, k, v, route.words, block_size=c, softmax_scale=softmax_scale, window=window, tile_q=tile_q, splits=splits,
    )
    stats = None
    if return_stats:
        first = nk - nq
        ends = torch.arange(kc.shape[2]) * params.kernel_stride + params.kernel_size - 1
        visible = int((ends[None, :] <= torch.arange(first, nk)[:, None]).sum()) if kc.shape[2] else 0
        stats = stats_from_counts(route.active, route.attended, nk, c, visible * hq * b)
    return out, stats
