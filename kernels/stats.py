"""Measured sparsity (METHODS.md, "Measured sparsity"): what every call and every result row reports."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class AttentionStats:
    """Work accounting of one attention call.

    ``sparsity`` = 1 - attended / causal query-key pairs, counted per KV head (the GQA group shares
    one selection) over every valid query. ``active_blocks[b, h, i]`` is the number of blocks in which
    query ``i`` attends at least one token (0 on padding). ``routing_scores`` counts the query-head x
    block (or kernel) scores the routing stage computed; it is reported apart, never folded into
    ``sparsity``.
    """

    attended_pairs: int
    causal_pairs: int
    routing_scores: int
    active_blocks: torch.Tensor  # [B, Hkv, Nq] int64
    valid_queries: torch.Tensor  # [B, Nq] bool
    attended_per_row: torch.Tensor  # [B] int64
    causal_per_row: torch.Tensor  # [B] int64
    block_size: int

    @property
    def sparsity(self) -> float:
        if self.causal_pairs == 0:
            return 0.0
        return 1.0 - self.attended_pairs / self.causal_pairs

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity


def chunk_stats(
    attended: torch.Tensor, active: torch.Tensor, positions: torch.Tensor, block_size: int, routing_scores: int = 0
) -> AttentionStats:
    """Stats of one query chunk from the tokens (``attended: [B, Hkv, L]``) and blocks (``active``)
    each query attends."""
    b, h, length = attended.shape
    causal_row = int((positions + 1).sum()) * h
    return AttentionStats(
        attended_pairs=int(attended.sum()),
        causal_pairs=causal_row * b,
        routing_scores=routing_scores,
        active_blocks=active.to(torch.int64),
        valid_queries=torch.ones(b, length, dtype=torch.bool, device=attended.device),
        attended_per_row=attended.sum((1, 2)).to(torch.int64).cpu(),
        causal_per_row=torch.full((b,), causal_row, dtype=torch.int64),
        block_size=block_size,
    )


def concat_stats(chunks: list[AttentionStats]) -> AttentionStats:
    """Join stats of consecutive query chunks of the same rows."""
    first = chunks[0]
    return AttentionStats(
        attended_pairs=sum(c.attended_pairs for c in chunks),
        causal_pairs=sum(c.causal_pairs for c in chunks),
        routing_scores=sum(c.routing_scores for c in chunks),
        active_blocks=torch.cat([c.active_blocks for c in chunks], dim=2),
        valid_queries=torch.cat([c.valid_queries for c in chunks], dim=1),
        attended_per_row=sum(c.attended_per_row for c in chunks),
        causal_per_row=sum(c.causal_per_row for c in chunks),
        block_size=first.block_size,
    )
