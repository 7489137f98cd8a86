"""``AttentionStats`` from the per-query counts that the routing kernels write (no token mask is built)."""

from __future__ import annotations

import torch
from dash_eval.kernels.stats import AttentionStats, attended_counts, causal_pairs_of


def block_index_sum(first: int, stop: int, block_size: int) -> int:
    """``sum(p // block_size for p in range(first, stop))``, in closed form (a decode step's caller would
    otherwise loop over every query in Python)."""

    def upto(n: int) -> int:  # sum of p // c over p < n
        m, r = divmod(max(n, 0), block_size)
        return block_size * m * (m - 1) // 2 + r * m

    return upto(stop) - upto(first)


def visible_kernel_pairs(first: int, stop: int, count: int, stride: int, size: int) -> int:
    """Query-kernel pairs the top-k routing scores: for each query ``p`` in ``first .. stop - 1``, the kernels
    ``j < count`` whose last key ``j * stride + size - 1`` is at most ``p``; in closed form."""
    if count <= 0 or stop <= first:
        return 0
    last = size - 1  # last key of kernel 0

    def ends_upto(p: int) -> int:  # kernels j < count with j * stride + last <= p
        return 0 if p < last else min(count, (p - last) // stride + 1)

    j0, j1 = ends_upto(first), ends_upto(stop - 1)  # kernels seen by every query; by the last one
    # kernels j0 .. j1 - 1 become visible at query j * stride + last and stay so up to stop - 1
    later = (j1 - j0) * (stop - last) - stride * (j1 * (j1 - 1) - j0 * (j0 - 1)) // 2
    return j0 * (stop - first) + later


def stats_from_counts(
    active: torch.Tensor, attended: torch.Tensor, nk: int, block_size: int, routing_scores: int
) -> AttentionStats:
    """``active``, ``attended``: ``[B, Hkv, Nq]`` integer counts of blocks and keys each query attends."""
    b, hkv, nq = active.shape
    causal_row = causal_pairs_of(nk - nq, nq) * hkv  # per KV head
    pairs, attended_row = attended_counts(attended.to(torch.int64).sum((1, 2)))
    return AttentionStats(
        attended_pairs=pairs,
        causal_pairs=causal_row * b,
        routing_scores=routing_scores,
        active_blocks=active.to(torch.int64),
        valid_queries=torch.ones(b, nq, dtype=torch.bool, device=active.device),
        attended_per_row=attended_row,
        causal_per_row=torch.full((b,), causal_row, dtype=torch.int64),
        block_size=block_size,
    )
