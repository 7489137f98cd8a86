"""``AttentionStats`` from the per-query counts that the routing kernels write (no token mask is built)."""

from __future__ import annotations

import torch
from dash_eval.kernels.stats import AttentionStats


def stats_from_counts(
    active: torch.Tensor, attended: torch.Tensor, nk: int, block_size: int, routing_scores: int
) -> AttentionStats:
    """``active``, ``attended``: ``[B, Hkv, Nq]`` integer counts of blocks and keys each query attends."""
    b, hkv, nq = active.shape
    causal_row = (nk - nq + 1 + nk) * nq // 2 * hkv  # sum of (position + 1) over the queries, per KV head
    attended_row = attended.to(torch.int64).sum((1, 2)).cpu()
    return AttentionStats(
        attended_pairs=int(attended_row.sum()),
        causal_pairs=causal_row * b,
        routing_scores=routing_scores,
        active_blocks=active.to(torch.int64),
        valid_queries=torch.ones(b, nq, dtype=torch.bool, device=active.device),
        attended_per_row=attended_row,
        causal_per_row=torch.full((b,), causal_row, dtype=torch.int64),
        block_size=block_size,
    )
