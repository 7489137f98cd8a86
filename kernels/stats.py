"""Measured sparsity (METHODS.md, "Measured sparsity"): what every call and every result row reports."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

import torch

_DEFERRED = contextvars.ContextVar("dash_eval_deferred_counts", default=False)


@contextlib.contextmanager
def deferred_counts() -> Iterator[None]:
    """Inside this block, stats leave their attended-pair counts where the kernels counted them: ``attended_pairs``
    a 0-dim int64 tensor and ``attended_per_row`` a tensor on the inputs' device, so that producing them never
    waits for the GPU.
    The patched models run every layer inside it, and their sparsity tally reads the counts once, when asked
    (``dash_models.tally``); a layer that waited for its counts would stall the host once per layer. Outside
    (the default) every count is a Python int and every per-row tensor is on the CPU."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def counts_deferred() -> bool:
    """True inside ``deferred_counts``."""
    return _DEFERRED.get()


def attended_counts(attended_row: torch.Tensor) -> tuple[int | torch.Tensor, torch.Tensor]:
    """``(attended_pairs, attended_per_row)`` from the per-row totals ``[B]``: host values, or the device's own
    inside ``deferred_counts``."""
    row = attended_row.to(torch.int64)
    if _DEFERRED.get():
        return row.sum(), row
    row = row.cpu()
    return int(row.sum()), row


def causal_pairs_of(first: int, count: int) -> int:
    """Causal query-key pairs of ``count`` consecutive queries from position ``first``: sum of ``p + 1``."""
    return count * (2 * first + count + 1) // 2


@dataclasses.dataclass
class AttentionStats:
    """Work accounting of one attention call.

    ``sparsity`` = 1 - attended / causal query-key pairs, counted per KV head (the GQA group shares
    one selection) over every valid query. ``active_blocks[b, h, i]`` is the number of blocks in which
    query ``i`` attends at least one token (0 on padding). ``routing_scores`` counts the query-head x
    block (or kernel) scores the routing stage computed; it is reported apart, never folded into
    ``sparsity``.

    Inside ``deferred_counts`` (the patched models' layers), ``attended_pairs`` is a 0-dim int64 tensor and
    ``attended_per_row`` lives on the inputs' device; everywhere else they are an int and a CPU tensor.
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
        return 1.0 - int(self.attended_pairs) / self.causal_pairs

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity


def chunk_stats(
    attended: torch.Tensor, active: torch.Tensor, first: int, block_size: int, routing_scores: int = 0
) -> AttentionStats:
    """Stats of one query chunk, the queries at positions ``first, first + 1, ...``, from the tokens
    (``attended: [B, Hkv, L]``) and blocks (``active``) each query attends."""
    if not isinstance(first, int):
        raise TypeError(f"chunk_stats: first must be the chunk's first query position, an int; got {type(first)}")
    b, h, length = attended.shape
    causal_row = causal_pairs_of(first, length) * h
    pairs, per_row = attended_counts(attended.sum((1, 2)))
    return AttentionStats(
        attended_pairs=pairs,
        causal_pairs=causal_row * b,
        routing_scores=routing_scores,
        active_blocks=active.to(torch.int64),
        valid_queries=torch.ones(b, length, dtype=torch.bool, device=attended.device),
        attended_per_row=per_row,
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
