"""``scripts/union_on_model.py``: the tile union it counts and its selection-grouped tiles, on hand-made
selections; and the bench-inputs mode end to end (small, CPU)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "union_on_model.py"


def _module():
    spec = importlib.util.spec_from_file_location("union_on_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grouping_by_selection_pairs_the_queries_that_share_blocks():
    mod = _module()
    # 8 queries, 4 blocks of one key: even queries pick blocks 0-1, odd ones 2-3
    n, nb, bs = 8, 4, 1
    sel = torch.zeros(1, n, nb, dtype=torch.bool)
    sel[0, 0::2, :2] = True
    sel[0, 1::2, 2:] = True
    order = mod.greedy_tiles(sel[0], tile=2, window=8)
    assert sorted(order.tolist()) == list(range(n))  # a permutation: every query in exactly one tile
    pairs = order.view(-1, 2) % 2
    assert bool((pairs[:, 0] == pairs[:, 1]).all())  # each tile holds two queries of the same pattern
    # neighbours' tiles walk all 4 blocks (32 of the 36 causal pairs), the grouped tiles 2: half the union
    assert mod.visited([sel], 2, bs) == 32 / 36
    assert mod.reordered_visited([sel], 2, 8, bs) == 16 / 36
    # a window of 2 queries leaves nothing to choose: the neighbours' tiles
    assert mod.greedy_tiles(sel[0], tile=2, window=2).tolist() == list(range(n))


def test_bench_inputs_mode_prints_the_table():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--inputs", "bench", "--tokens", "4096", "--sparsity", "0.6",
                           "--reorder", "64"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = proc.stdout.strip().splitlines()[-1].split("|")
    cells = [float(c) for c in row[2:-1]]
    assert abs(cells[0] - 0.6) < 0.01  # the bisected sparsity
    one, two, four, eight, sixteen, grouped4, grouped16 = cells[1:]
    assert abs(one - (1 - cells[0])) < 0.02  # one query a tile walks its own blocks
    assert one < two < four < eight < sixteen <= 1.0  # a tile's union grows with its queries
    # on these inputs grouping by selection shrinks the union, though by far less than to one query's
    assert one < grouped4 < four and four < grouped16 < sixteen


def test_bad_options_are_refused():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--inputs", "bench", "--reorder", "10"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--reorder 10" in proc.stderr
