"""Per-model sparsity tally: every patched forward pass adds its attention stats here, prefill and
decode apart, so an evaluation reports the sparsity of exactly the samples it ran."""

from __future__ import annotations

import dataclasses

import torch
from dash_eval.kernels.stats import AttentionStats

PHASES = ("prefill", "decode")


def _percentile(hist: torch.Tensor, q: float) -> float:
    """Nearest-rank percentile of a histogram of non-negative integers."""
    total = int(hist.sum())
    if total == 0:
        return 0.0
    rank = max(1, int(-(-q * total // 1)))  # ceil(q * total), at least the first
    return float(torch.searchsorted(hist.cumsum(0), torch.tensor(rank)).item())


@dataclasses.dataclass
class PhaseTally:
    attended_pairs: int = 0
    causal_pairs: int = 0
    routing_scores: int = 0
    queries: int = 0  # query x KV-head x layer entries counted in the histogram
    hist: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(1, dtype=torch.int64))

    def add_hist(self, values: torch.Tensor) -> None:
        counts = torch.bincount(values.flatten().cpu(), minlength=1)
        if counts.numel() > self.hist.numel():
            self.hist = torch.nn.functional.pad(self.hist, (0, counts.numel() - self.hist.numel()))
        self.hist[: counts.numel()] += counts
        self.queries += int(values.numel())

    def summary(self) -> dict[str, float | int]:
        mean = float((self.hist * torch.arange(self.hist.numel())).sum()) / self.queries if self.queries else 0.0
        return {
            "sparsity": 1.0 - self.attended_pairs / self.causal_pairs if self.causal_pairs else 0.0,
            "active_blocks_mean": mean,
            "active_blocks_p10": _percentile(self.hist, 0.10),
            "active_blocks_p50": _percentile(self.hist, 0.50),
            "active_blocks_p90": _percentile(self.hist, 0.90),
            "queries": self.queries,
            "attended_pairs": self.attended_pairs,
            "causal_pairs": self.causal_pairs,
            "routing_scores": self.routing_scores,
        }


class SparsityTally:
    """Totals per phase since the last ``reset()``, plus per batch row since the last ``begin_batch()``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.totals = {phase: PhaseTally() for phase in PHASES}
        # per layer: [attended pairs, causal pairs] (what per-layer sparsity calibration reads)
        self.layers: dict[str, dict[int, list[int]]] = {phase: {} for phase in PHASES}
        self.begin_batch()

    def begin_batch(self) -> None:
        self.rows: dict[str, list[PhaseTally]] = {phase: [] for phase in PHASES}

    def add(self, phase: str, stats: AttentionStats, layer: int | None = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase={phase!r}; accepted: {', '.join(PHASES)}")
        if layer is not None:
            pairs = self.layers[phase].setdefault(layer, [0, 0])
            pairs[0] += stats.attended_pairs
            pairs[1] += stats.causal_pairs
        valid = stats.valid_queries[:, None, :].expand_as(stats.active_blocks)
        total = self.totals[phase]
        total.attended_pairs += stats.attended_pairs
        total.causal_pairs += stats.causal_pairs
        total.routing_scores += stats.routing_scores
        total.add_hist(stats.active_blocks[valid])
        rows = self.rows[phase]
        while len(rows) < stats.active_blocks.shape[0]:
            rows.append(PhaseTally())
        for b, row in enumerate(rows[: stats.active_blocks.shape[0]]):
            row.attended_pairs += int(stats.attended_per_row[b])
            row.causal_pairs += int(stats.causal_per_row[b])
            row.add_hist(stats.active_blocks[b][valid[b]])

    def summary(self, phase: str = "prefill") -> dict[str, float | int]:
        return self.totals[phase].summary()

    def layer_sparsity(self, phase: str = "prefill") -> dict[int, float]:
        """Sparsity of each layer (METHODS.md's definition restricted to that layer), by layer index."""
        return {layer: 1.0 - a / c if c else 0.0 for layer, (a, c) in sorted(self.layers[phase].items())}

    def row_summaries(self, phase: str = "prefill") -> list[dict[str, float | int]]:
        return [row.summary() for row in self.rows[phase]]

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        return {phase: self.summary(phase) for phase in PHASES}
