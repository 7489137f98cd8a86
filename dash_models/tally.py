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


# Stats of this many patched calls wait on the device at most; then the tally reads them (one wait for the GPU).
_PENDING_CALLS = 512
_PENDING_VALUES = 1 << 24  # or this many active-block counts (128 MiB of int64)


def _on_host(stats: AttentionStats) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(attended_pairs, active_blocks, valid_queries, attended_per_row)`` of ``stats`` on the CPU, with one copy
    from the device however many of them live there (``deferred_counts``)."""
    b = stats.active_blocks.shape[0]
    parts = [stats.active_blocks.to(torch.int64).flatten(), stats.valid_queries.to(torch.int64).flatten(),
             torch.as_tensor(stats.attended_per_row).to(stats.active_blocks.device, torch.int64).flatten(),
             torch.as_tensor(stats.attended_pairs).to(stats.active_blocks.device, torch.int64).reshape(1)]
    flat = torch.cat(parts).cpu()
    n_act, n_valid = parts[0].numel(), parts[1].numel()
    active = flat[:n_act].view(stats.active_blocks.shape)
    valid = flat[n_act : n_act + n_valid].view(stats.valid_queries.shape).bool()
    per_row = flat[n_act + n_valid : n_act + n_valid + b]
    return int(flat[-1]), active, valid, per_row


class SparsityTally:
    """Totals per phase since the last ``reset()``, plus per batch row since the last ``begin_batch()``.

    ``add`` only queues a call's stats: their counts may still be on the GPU (``deferred_counts``), and reading
    them there would make the host wait once per layer. They are read when the tally is (``summary``,
    ``layer_sparsity``, ``rows``, ...), when a batch begins, or when many are queued."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._pending: list[tuple[str, AttentionStats, int | None]] = []
        self._pending_values = 0
        self._totals = {phase: PhaseTally() for phase in PHASES}
        # per layer: [attended pairs, causal pairs] (what per-layer sparsity calibration reads)
        self._layers: dict[str, dict[int, list[int]]] = {phase: {} for phase in PHASES}
        self._rows: dict[str, list[PhaseTally]] = {phase: [] for phase in PHASES}

    def begin_batch(self) -> None:
        self._flush()
        self._rows = {phase: [] for phase in PHASES}

    def add(self, phase: str, stats: AttentionStats, layer: int | None = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase={phase!r}; accepted: {', '.join(PHASES)}")
        self._pending.append((phase, stats, layer))
        self._pending_values += stats.active_blocks.numel()
        if len(self._pending) >= _PENDING_CALLS or self._pending_values >= _PENDING_VALUES:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending, self._pending_values = self._pending, [], 0
        for i, (phase, stats, layer) in enumerate(pending):
            try:
                self._count(phase, stats, layer)
            except BaseException:  # call i was not counted (its copy failed): it and the rest stay queued
                self._pending = pending[i:] + self._pending
                self._pending_values = sum(s.active_blocks.numel() for _, s, _ in self._pending)
                raise

    def _count(self, phase: str, stats: AttentionStats, layer: int | None) -> None:
        attended, active, valid, per_row = _on_host(stats)
        if layer is not None:
            pairs = self._layers[phase].setdefault(layer, [0, 0])
            pairs[0] += attended
            pairs[1] += stats.causal_pairs
        valid = valid[:, None, :].expand_as(active)
        total = self._totals[phase]
        total.attended_pairs += attended
        total.causal_pairs += stats.causal_pairs
        total.routing_scores += stats.routing_scores
        total.add_hist(active[valid])
        rows = self._rows[phase]
        while len(rows) < active.shape[0]:
            rows.append(PhaseTally())
        for b, row in enumerate(rows[: active.shape[0]]):
            row.attended_pairs += int(per_row[b])
            row.causal_pairs += int(stats.causal_per_row[b])
            row.add_hist(active[b][valid[b]])

    @property
    def totals(self) -> dict[str, PhaseTally]:
        self._flush()
        return self._totals

    @property
    def layers(self) -> dict[str, dict[int, list[int]]]:
        self._flush()
        return self._layers

    @property
    def rows(self) -> dict[str, list[PhaseTally]]:
        """Per batch row since ``begin_batch()``, per phase."""
        self._flush()
        return self._rows

    def summary(self, phase: str = "prefill") -> dict[str, float | int]:
        return self.totals[phase].summary()

    def layer_sparsity(self, phase: str = "prefill") -> dict[int, float]:
        """Sparsity of each layer (METHODS.md's definition restricted to that layer), by layer index."""
        return {layer: 1.0 - a / c if c else 0.0 for layer, (a, c) in sorted(self.layers[phase].items())}

    def row_summaries(self, phase: str = "prefill") -> list[dict[str, float | int]]:
        return [row.summary() for row in self.rows[phase]]

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        return {phase: self.summary(phase) for phase in PHASES}
