"""The Triton forward of the two top-k methods: kernel keys, on-chip top-k routing, the fine stage."""

from __future__ import annotations

import warnings

import torch
from dash_eval.kernels._triton.accounting import stats_from_counts, visible_kernel_pairs
from dash_eval.kernels._triton.block_sparse import decode_splits, routed_visit_list, sparse_attention_from_words
from dash_eval.kernels._triton.kernel_keys import KernelKeys, complete_kernels, kernel_keys_triton, split_keys
from dash_eval.kernels._triton.launch import kernel_supports
from dash_eval.kernels._triton.topk_routing import topk_route
from dash_eval.kernels.registry import get_method
from dash_eval.kernels.stats import AttentionStats
from triton.runtime.errors import OutOfResources


def topk_unsupported(q: torch.Tensor, params) -> str | None:
    """Why the Triton kernels cannot run this top-k method on these inputs (None when they can)."""
    reason = kernel_supports(q, params.block_size)
    if reason is None and params.block_size % params.kernel_stride:
        reason = f"block_size={params.block_size} is not a multiple of kernel_stride={params.kernel_stride}"
    return reason


def check_kernel_keys(method: str, keys: KernelKeys, k: torch.Tensor, params) -> None:
    """A decode cache's kernel keys must be those of ``k`` under ``params``."""
    b, hkv, nk, d = k.shape
    want = complete_kernels(nk, params.kernel_size, params.kernel_stride)
    if (keys.kernel_size, keys.kernel_stride) != (params.kernel_size, params.kernel_stride):
        raise ValueError(
            f"{method}: kernel_keys were built with kernel_size={keys.kernel_size}, kernel_stride="
            f"{keys.kernel_stride}; the parameters say {params.kernel_size}, {params.kernel_stride}"
        )
    if k.dtype != torch.float32 and (keys.lo is not None) != split_keys(params):
        raise ValueError(
            f"{method}: kernel_keys were built {'with' if keys.lo is not None else 'without'} the float32 residual; "
            f"score_precision={params.score_precision!r} needs them {'with' if split_keys(params) else 'without'}"
        )
    if keys.count != want or tuple(keys.hi.shape[:2]) != (b, hkv) or keys.hi.shape[3] != d or keys.hi.dtype != k.dtype:
        raise ValueError(
            f"{method}: kernel_keys hold {keys.count} kernels of shape {tuple(keys.hi.shape)} ({keys.hi.dtype}); "
            f"keys {tuple(k.shape)} ({k.dtype}) need {want} kernels of [{b}, {hkv}, capacity, {d}]"
        )


def topk_attention_triton(
    method: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params, *, pool: int, window: int,
    softmax_scale: float, return_stats: bool, kernel_keys: KernelKeys | None = None, tile_q: int | None = None,
    splits: int | None = None,
) -> tuple[torch.Tensor, AttentionStats | None]:
    if topk_unsupported(q, params) is not None:
        return get_method(method).reference(q, k, v, params, softmax_scale=softmax_scale, return_stats=return_stats)
    b, hq, nq, _ = q.shape
    nk, c = k.shape[2], params.block_size
    if kernel_keys is None:
        kernel_keys = kernel_keys_triton(k, params.kernel_size, params.kernel_stride, split=split_keys(params))
    else:
        check_kernel_keys(method, kernel_keys, k, params)
    try:
        route = topk_route(
            q, kernel_keys, nk, pool=pool, block_size=c, init_blocks=params.init_blocks,
            local_blocks=params.local_blocks, topk=params.topk, softmax_scale=softmax_scale, window=window,
        )
    except OutOfResources as exc:  # over the GPU's shared memory even at one stage and the narrowest score chunk
        warnings.warn(f"{method}: the Triton routing does not fit this GPU's shared memory ({exc}); the reference "
                      "runs instead", RuntimeWarning, stacklevel=2)
        return get_method(method).reference(q, k, v, params, softmax_scale=softmax_scale, return_stats=return_stats)
    if splits is None:  # a query visits at most its top-k, its forced blocks and its window's blocks
        window_blocks = -(-window // c) + 1 if window > 0 else 0
        splits = decode_splits(q, k, c, visits=nq * (params.topk + params.init_blocks + params.local_blocks
                                                    + window_blocks))
    tiles, tile_q = routed_visit_list(route, tile_q)
    out = sparse_attention_from_words(
        q, k, v, route.words, block_size=c, softmax_scale=softmax_scale, window=window, tile_q=tile_q, splits=splits,
        tiles=tiles,
    )
    stats = None
    if return_stats:
        visible = visible_kernel_pairs(nk - nq, nk, kernel_keys.count, params.kernel_stride, params.kernel_size)
        stats = stats_from_counts(route.active, route.attended, nk, c, visible * hq * b)
    return out, stats
