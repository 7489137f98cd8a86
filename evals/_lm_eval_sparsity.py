"""Measured sparsity per lm-eval sample and per task, for the model ``dash``.

lm-eval runs the requests of all tasks together, sorted by length and batched, so the model's sparsity
tally (``dash_eval.dash_models.tally``), which keeps one row per batch row since ``begin_batch()``, has
to be handed back to the requests: ``SampleRecorder`` takes every batch's rows and gives each row to the
request(s) HFLM reports a result for (``cache_hook.add_partial``), keyed by lm-eval's ``(task_name,
doc_id)``. Rows keep the tally's histogram of active blocks, so merging samples into a task gives exact
percentiles, not averages of percentiles.

What lands in lm-eval's results (``annotate``):

- ``results["results"][task]`` (and each group's row): ``sparsity,prefill``, ``active_blocks_mean,prefill``,
  ``active_blocks_p10,prefill``, ``..._p50``, ``..._p90`` and the same with ``decode`` (only phases that
  ran), so lm-eval's table prints them next to the accuracy with the phase in the Filter column;
- ``results["dash_attention"]``: the method, its parameters and, per task and group, the full figures
  (queries, attended and causal pairs) and ``samples_measured``;
- each logged sample (``--log_samples``): ``"dash_attention": {"prefill": {...}, "decode": {...}}``.

A sample answered from lm-eval's response cache (``--use_cache``) ran no forward pass and has no
figures; ``samples_measured`` says how many did.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from dash_eval.dash_models.tally import PHASES, PhaseTally

RESULTS_KEY = "dash_attention"
HEADLINE = ("sparsity", "active_blocks_mean", "active_blocks_p10", "active_blocks_p50", "active_blocks_p90")
# Rows of the tally do not count routing scores (only whole batches do), so no per-sample figure has them.
DROPPED = ("routing_scores",)

logger = logging.getLogger(__name__)

Row = dict[str, PhaseTally]  # phase -> that batch row's tally


def merge_tallies(tallies: Iterable[PhaseTally]) -> PhaseTally:
    """One tally of several: pair counts add up, histograms of active blocks add up."""
    out = PhaseTally()
    for tally in tallies:
        out.attended_pairs += tally.attended_pairs
        out.causal_pairs += tally.causal_pairs
        out.queries += tally.queries
        hist = tally.hist.to(torch.int64)
        if hist.numel() > out.hist.numel():
            out.hist = torch.nn.functional.pad(out.hist, (0, hist.numel() - out.hist.numel()))
        out.hist[: hist.numel()] += hist
    return out


def phase_figures(rows: list[Row]) -> dict[str, dict[str, float | int]]:
    """``{phase: summary}`` over ``rows`` (each counted once), for the phases that have queries."""
    unique = list({id(row): row for row in rows}.values())
    figures = {}
    for phase in PHASES:
        merged = merge_tallies(row[phase] for row in unique if row.get(phase) is not None)
        if merged.queries:
            summary = merged.summary()
            figures[phase] = {k: v for k, v in summary.items() if k not in DROPPED}
    return figures


class SampleRecorder:
    """Gives each batch row of the tally to the lm-eval requests that row served.

    The model calls ``serving(kind, requests)`` around one request type, ``rows_done(tally.rows)`` after
    every batch, ``next_row()`` where HFLM starts on the next row of a loglikelihood batch, and
    ``on_result(kind, key)`` from lm-eval's cache hook for every request answered.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._docs: dict[tuple[str, int], list[Row]] = defaultdict(list)
        self._end_serving()
        self._unmatched = 0

    def _end_serving(self) -> None:
        self._kind: str | None = None
        self._pending: dict[str, list[Any]] = {}
        self._whole: Any = None
        self._rows: list[Row] = []
        self._cursor = -1
        self._expected: dict[int, set[int]] = {}

    @contextlib.contextmanager
    def serving(self, kind: str, requests: list[Any]) -> Iterator[None]:
        self._end_serving()
        self._kind = kind
        pending: dict[str, list[Any]] = defaultdict(list)
        for request in requests:  # a request that repeats appears as often as it runs
            pending[request.args[0]].append(request)
        self._pending = pending
        # loglikelihood_rolling is served one document at a time: every row is that document's.
        self._whole = requests[0] if kind == "loglikelihood_rolling" and len(requests) == 1 else None
        try:
            yield
        finally:
            self._end_serving()

    def rows_done(self, rows_by_phase: dict[str, list[PhaseTally]]) -> None:
        count = max((len(rows) for rows in rows_by_phase.values()), default=0)
        rows = [
            {phase: rows_by_phase[phase][i] for phase in PHASES if i < len(rows_by_phase.get(phase, []))}
            for i in range(count)
        ]
        if self._whole is not None:
            self._docs[self._key(self._whole)].extend(rows)
            return
        self._rows = rows
        self._cursor = -1

    def next_row(self) -> None:
        self._cursor += 1

    def on_result(self, kind: str, key: Any) -> None:
        if self._kind is None or kind != self._kind or kind == "loglikelihood_rolling":
            return
        if kind == "generate_until":  # one result per row, in row order
            self._cursor += 1
        context, second = key
        candidates = self._pending.get(context, [])
        for i, request in enumerate(candidates):
            if request.args[1] == second:
                del candidates[i]
                break
        else:
            self._unmatched += 1
            return
        if 0 <= self._cursor < len(self._rows):
            self._docs[self._key(request)].append(self._rows[self._cursor])
        else:
            self._unmatched += 1

    @staticmethod
    def _key(request: Any) -> tuple[str, int]:
        return request.task_name, request.doc_id

    # --- right padding of loglikelihood batches ---------------------------------------------------------

    def expect_inputs(self, inputs: Iterable[list[int]]) -> None:
        """The unpadded token rows the coming loglikelihood batches are made of."""
        expected: dict[int, set[int]] = defaultdict(set)
        for tokens in inputs:
            expected[len(tokens)].add(hash(tuple(tokens)))
        self._expected = dict(expected)

    def right_padding_mask(self, inps: torch.Tensor) -> torch.Tensor | None:
        """A ``[B, L]`` mask of the real tokens of a right-padded batch (HFLM pads with zeros), or None
        when no row is padded or a row matches no expected input."""
        if not self._expected or inps.dim() != 2:
            return None
        width = inps.shape[1]
        lengths = []
        for row in inps.tolist():
            length = self._real_length(row, width)
            if length is None:
                return None
            lengths.append(length)
        if all(n == width for n in lengths):
            return None
        positions = torch.arange(width, device=inps.device)
        return (positions[None, :] < torch.tensor(lengths, device=inps.device)[:, None]).to(torch.long)

    def _real_length(self, row: list[int], width: int) -> int | None:
        if hash(tuple(row)) in self._expected.get(width, ()):
            return width
        last = max((i for i, t in enumerate(row) if t != 0), default=-1)
        for n in range(last + 1, width):
            if n in self._expected and hash(tuple(row[:n])) in self._expected[n]:
                return n
        return None

    # --- results ----------------------------------------------------------------------------------------

    def doc_figures(self) -> dict[tuple[str, int], dict[str, dict[str, float | int]]]:
        return {key: phase_figures(rows) for key, rows in self._docs.items()}

    def annotate(
        self,
        results: dict | None,
        *,
        attention: dict[str, Any],
        doc_indices: dict[str, list[int]] | None = None,
    ) -> dict | None:
        """Add the figures to lm-eval's ``results`` (see the module docstring) and forget them: the next
        evaluation starts empty. ``doc_indices`` is lm-eval's ``samples`` argument, which renumbers docs."""
        try:
            if results is not None:
                self._annotate(results, attention, doc_indices or {})
            return results
        finally:
            if self._unmatched:
                logger.warning("dash-eval: %d results could not be matched to a batch row", self._unmatched)
            self.clear()

    def _annotate(self, results: dict, attention: dict[str, Any], doc_indices: dict[str, list[int]]) -> None:
        task_rows: dict[str, list[Row]] = defaultdict(list)
        task_docs: dict[str, int] = defaultdict(int)
        for (task, _), rows in self._docs.items():
            task_rows[task] += rows
            task_docs[task] += 1

        subtasks = results.get("group_subtasks", {})

        def leaves(name: str, seen: frozenset = frozenset()) -> list[str]:
            if name not in subtasks or name in seen:
                return [name]
            return [leaf for child in subtasks[name] for leaf in leaves(child, seen | {name})]

        figures: dict[str, dict[str, Any]] = {}
        for name in [*task_rows, *subtasks]:
            names = leaves(name)
            rows = [row for leaf in names for row in task_rows.get(leaf, [])]
            if not rows:
                continue
            figures[name] = {"samples_measured": sum(task_docs.get(leaf, 0) for leaf in names)}
            figures[name].update(phase_figures(rows))

        for section in ("results", "groups"):
            for name, row in results.get(section, {}).items():
                for phase in PHASES:
                    for key in HEADLINE if phase in figures.get(name, {}) else ():
                        row[f"{key},{phase}"] = figures[name][phase][key]

        results[RESULTS_KEY] = {
            "method": attention.get("method"),
            "params": dict(attention.get("params", {})),
            "tasks": figures,
        }

        per_doc = self.doc_figures()
        for task, samples in (results.get("samples") or {}).items():
            indices = doc_indices.get(task)
            by_true_id = {
                (indices[doc_id] if indices else doc_id): figs
                for (name, doc_id), figs in per_doc.items()
                if name == task
            }
            for sample in samples:
                figs = by_true_id.get(sample.get("doc_id"))
                if figs:
                    sample[RESULTS_KEY] = figs
