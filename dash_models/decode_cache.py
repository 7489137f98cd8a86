"""Incremental DashAttention block summaries for generation on GPU.

During decoding the keys grow by one token a step; recomputing every block summary from all cached
keys each step would read the whole cache twice. Each attention layer keeps its summaries here: a
prefill (re)computes them, a decode step appends the blocks that became complete. Used only on the
Triton path (CUDA, no padding); anything else takes the ordinary route.
"""

from __future__ import annotations

import dataclasses

import torch

_ATTR = "_dash_decode_summaries"
_GROWTH_BLOCKS = 64  # spare capacity so that a long generation rarely reallocates


@dataclasses.dataclass
class _LayerCache:
    summaries: object  # kernels.dash.triton_routing.BlockSummaries
    nk: int
    batch: int


def triton_dash_available(query: torch.Tensor, backend: str, method: str) -> bool:
    if method != "dash" or backend == "reference" or not query.is_cuda:
        return False
    try:
        import dash_eval.kernels.triton_backend  # noqa: F401
    except ImportError:
        return False
    return True


def dash_forward_with_cache(module, query, key, value, params, softmax_scale):
    """``dash`` on the Triton kernels with this layer's cached summaries; returns ``(out, stats)``."""
    from dash_eval.kernels.dash.triton_attention import _router, dash_attention_triton
    from dash_eval.kernels.dash.triton_routing import allocate_summaries, update_summaries

    b, _, nq, _ = query.shape
    nk, c = key.shape[2], params.block_size
    cache: _LayerCache | None = module.__dict__.get(_ATTR)
    continues = (
        cache is not None and nq == 1 and cache.batch == b and cache.nk + 1 == nk
        and cache.summaries.kbar.shape[2] >= nk // c
    )
    if not continues:
        summaries = allocate_summaries(key, max(1, nk // c) + _GROWTH_BLOCKS)
        cache = _LayerCache(summaries, nk, b)
        module.__dict__[_ATTR] = cache
    update_summaries(cache.summaries, key, _router(params, key), c, softmax_scale)
    cache.nk = nk
    return dash_attention_triton(
        query, key, value, params, softmax_scale=softmax_scale, return_stats=True, summaries=cache.summaries
    )


def clear(module: torch.nn.Module) -> None:
    module.__dict__.pop(_ATTR, None)
