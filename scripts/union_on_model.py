"""How much a query tile's union of `dash` selections costs on a real model, against the benchmark's inputs.

The fine stage walks, for each tile of queries, every block that any of its queries selected
(docs/perf-notes.md, "Query-tile height against the union"). On `dash-eval bench`'s structured random inputs
a tile of 4 queries (32 query heads over 2 KV heads: 64 rows) walks 0.59 of the causal range at 75% per-query
sparsity, and a tile of 16 queries (8 KV heads) 0.83. This script measures the same fraction on the embedded
model's own queries and keys: a needle-in-a-haystack prompt (essay haystack) runs through SmolLM2-135M with
`dash` at its defaults while each layer's rotated queries and keys are recorded; then one routing `scale` is
bisected until the selection of all layers together is 75% (or `--sparsity`) sparse (METHODS.md's measure),
and the visited fraction is counted for tiles of 1, 2, 4, 8 and 16 queries (the GQA group shares the selection,
so the union depends only on the queries per tile), as `dash-eval bench` counts it.

    python scripts/union_on_model.py --tokens 4096 [--sparsity 0.75] [--block-size 64]

CPU only, about a minute on 2 cores. Prints a table per layer group and the whole model.
"""

from __future__ import annotations

import argparse
import math

import torch
from dash_eval.dash_models import apply_attention, load_model
from dash_eval.dash_models import patch as patch_module
from dash_eval.kernels.common import num_blocks
from dash_eval.kernels.dash.naive import dash_block_summaries, dash_route
from dash_eval.tasks import generate_samples

TILES = (1, 2, 4, 8, 16)


def capture(tokens: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor, float]], int]:
    """Each layer's (q, k, softmax scale) on a needle prompt of about ``tokens`` tokens."""
    model, tokenizer = load_model("default", method="full")
    sample = generate_samples("niah_single", length=tokens, n=1, seed=0, tokenizer=tokenizer, haystack="essay")[0]
    ids = tokenizer(sample.prompt(), return_tensors="pt").input_ids
    apply_attention(model, "dash")
    seen: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    original = patch_module.sparse_attention

    def recording(query, key, value, method, **kw):
        seen.append((query.detach().clone(), key.detach().clone(), kw.get("softmax_scale") or query.shape[-1] ** -0.5))
        return original(query, key, value, method, **kw)

    patch_module.sparse_attention = recording
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        patch_module.sparse_attention = original
    return seen, ids.shape[1]


def selections(layers, scale: float, block_size: int) -> list[torch.Tensor]:
    """Per layer ``[Hkv, N, nblocks]`` bool: the routed or forced blocks of every query at routing ``scale``."""
    out = []
    for q, k, softmax_scale in layers:
        b, hq, n, d = q.shape
        hkv = k.shape[1]
        kbar = dash_block_summaries(k, None, block_size, softmax_scale)
        qg = q.view(b, hkv, hq // hkv, n, d)
        sel, _, _ = dash_route(qg, kbar, torch.arange(n), num_blocks(n, block_size), alpha=1.5, scale=scale,
                               sigma=1e6, init_blocks=0, local_blocks=1, block_size=block_size,
                               softmax_scale=softmax_scale)
        out.append(sel[0])
    return out


def block_keys(n: int, nblocks: int, block_size: int) -> torch.Tensor:
    """``[N, nblocks]``: the causal keys of block ``j`` that query ``i`` may attend."""
    i = torch.arange(n)[:, None]
    start = torch.arange(nblocks)[None, :] * block_size
    return (i - start + 1).clamp(min=0, max=block_size)


def sparsity(sels: list[torch.Tensor], block_size: int) -> float:
    attended = causal = 0
    for sel in sels:
        hkv, n, nb = sel.shape
        keys = block_keys(n, nb, block_size)
        attended += int((sel * keys).sum())
        causal += hkv * n * (n + 1) // 2
    return 1 - attended / causal


def visited(sels: list[torch.Tensor], tile: int, block_size: int) -> float:
    """``dash-eval bench``'s ``visited``: blocks in the union of each tile, times the tile's queries and the
    block size, over the causal pairs (at most 1)."""
    walked = causal = 0
    for sel in sels:
        hkv, n, nb = sel.shape
        pad = (-n) % tile
        s = torch.nn.functional.pad(sel, (0, 0, 0, pad)).view(hkv, -1, tile, nb)
        walked += int(s.any(2).sum()) * tile * block_size
        causal += hkv * n * (n + 1) // 2
    return min(1.0, walked / causal)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--block-size", type=int, default=64)
    args = parser.parse_args()
    if not 0 < args.sparsity < 1:
        parser.error(f"--sparsity {args.sparsity}: accepted: a fraction strictly between 0 and 1")
    layers, n = capture(args.tokens)
    lo, hi = -4.0, 10.0  # log2(scale)
    best = None
    for _ in range(18):
        mid = (lo + hi) / 2
        sp = sparsity(selections(layers, 2.0**mid, args.block_size), args.block_size)
        if best is None or abs(sp - args.sparsity) < abs(best[1] - args.sparsity):
            best = (mid, sp)
        if abs(sp - args.sparsity) < 0.002:
            break
        lo, hi = (mid, hi) if sp < args.sparsity else (lo, mid)
    scale = 2.0 ** best[0]
    sels = selections(layers, scale, args.block_size)
    print(f"# SmolLM2-135M-Instruct (embedded), {n} tokens (niah_single, essay haystack), block {args.block_size}, "
          f"alpha 1.5, mean-pooled summaries; one scale {scale:.4g} for all layers -> sparsity "
          f"{sparsity(sels, args.block_size):.3f}")
    print("| layers | sparsity | " + " | ".join(f"visited, {t}-query tiles" for t in TILES) + " |")
    print("|---|---:|" + "---:|" * len(TILES))
    groups = [(f"{a}-{min(a + 9, len(sels) - 1)}", sels[a : a + 10]) for a in range(0, len(sels), 10)]
    for name, group in [*groups, ("all", sels)]:
        cells = " | ".join(f"{visited(group, t, args.block_size):.3f}" for t in TILES)
        print(f"| {name} | {sparsity(group, args.block_size):.3f} | {cells} |")
    if not math.isfinite(scale):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
